"""Authentication of every call, before its request is read.

Why an interceptor: it sees the method and the metadata of a call before any request message
is read, so every call is checked in one place and no handler can forget it. Three kinds:

* runner calls (``/sandboxd.runner.v1.RunnerService/``) carry the runner's credential, or,
  on ``Connect`` only, a join token;
* admin calls (``/sandboxd.admin.v1.``) need an API key of role ``admin``;
* everything else (the public ``coreweave.sandbox`` API and whatever is added later) needs an
  API key, unless the control plane runs with ``--insecure-no-auth``. Closed by default.

The identity found is bound to the call (:mod:`sandboxd.controlplane.caller`) by wrapping the
handler. A refused call gets a handler of the method's response shape that is always
request-*streaming* and never reads: grpc then never buffers or decodes the request body, so
a stranger's 95 MiB message costs at most a flow-control window, not 95 MiB of memory.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from sandboxd.controlplane.caller import UNAUTHENTICATED_ADMIN, Identity, bind
from sandboxd.controlplane.identity_service import PROPOSED_CREDENTIAL_HEADER, IdentityService
from sandboxd.errors import ApiError, permission_denied, status_trailers

RUNNER_PREFIX = "/sandboxd.runner.v1.RunnerService/"
RUNNER_CONNECT = RUNNER_PREFIX + "Connect"
ADMIN_PREFIX = "/sandboxd.admin.v1."

if TYPE_CHECKING:  # the grpc-stubs generics do not exist at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def header(metadata: Iterable[tuple[str, Any]] | None, name: str) -> str | None:
    """The value of the first ``name`` header (None if there is none)."""
    for key, value in metadata or ():
        if key.lower() == name:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the first ``authorization: Bearer <token>`` header, if any."""
    text = header(metadata, "authorization")
    if text is None:
        return None
    scheme, _, token = text.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Resolves each call's identity from its metadata, or refuses the call unread."""

    def __init__(self, identity: IdentityService, *, insecure_no_auth: bool = False) -> None:
        self._identity = identity
        self._insecure = insecure_no_auth

    async def _resolve(
        self, method: str, token: str | None, metadata: Iterable[tuple[str, Any]]
    ) -> Identity:
        if method.startswith(RUNNER_PREFIX):
            joining = method == RUNNER_CONNECT
            proposed = (header(metadata, PROPOSED_CREDENTIAL_HEADER) or "") if joining else ""
            return await self._identity.authenticate_runner(
                token, allow_join=joining, proposed=proposed
            )
        if self._insecure:
            return UNAUTHENTICATED_ADMIN
        caller = await self._identity.authenticate_key(token)
        if method.startswith(ADMIN_PREFIX) and not caller.is_admin:
            raise permission_denied(
                f"{method.rsplit('/', 1)[-1]} needs an API key of role admin; key "
                f"{caller.key_id} is a {caller.role.value} key of {caller.organization!r}",
                "CWSANDBOX_ADMIN_ROLE_REQUIRED",
                key_id=caller.key_id,
            )
        return caller

    async def identify(self, method: str, metadata: Iterable[tuple[str, Any]]) -> Identity:
        """The identity of a call to ``method`` with ``metadata``; raises ApiError if refused.

        What the interceptor does before binding, for calls that do not come through the
        gRPC server (the in-process runner link, :mod:`sandboxd.controlplane.local_link`).
        """
        metadata = tuple(metadata)
        return await self._resolve(method, bearer_token(metadata), metadata)

    async def intercept_service(  # type: ignore[override]  # grpc-stubs forget None
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """Bind the caller to the call, or answer UNAUTHENTICATED/PERMISSION_DENIED."""
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED, nothing to read
            return None
        method = handler_call_details.method or ""
        metadata = tuple(handler_call_details.invocation_metadata or ())
        try:
            identity = await self._resolve(method, bearer_token(metadata), metadata)
        except ApiError as error:
            return _refusing(handler, error)
        return _binding(handler, identity)


def _refusing(handler: Handler, error: ApiError) -> Handler:
    """A handler with the method's response shape that refuses without reading a request."""

    async def refuse(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.code, error.message, trailing_metadata=status_trailers(error))

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


def _binding(handler: Handler, identity: Identity) -> Handler:
    """``handler`` with each behaviour first binding ``identity`` to the call."""
    replaced: dict[str, Any] = {}
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            replaced[kind] = _bound(behavior, identity)
    return handler._replace(**replaced)  # type: ignore[attr-defined,no-any-return]


def _bound(behavior: Callable[..., Any], identity: Identity) -> Callable[..., Any]:
    # grpc.aio picks how to drive a handler from its function type, so keep the type.
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            bind(identity)
            async for response in behavior(request, context):
                yield response

        return stream

    async def call(request: Any, context: Any) -> Any:
        bind(identity)
        return await behavior(request, context)

    return call
