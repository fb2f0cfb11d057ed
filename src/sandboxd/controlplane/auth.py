"""Client authentication for the public API: ``authorization: Bearer <API key>``.

Why an interceptor: every public RPC (discovery, gateway, streaming) needs the same check, and
doing it before the handler runs means no handler can forget it. Runner connections are not
checked here; they prove themselves with the join token in their register message. With no API
keys configured (a local ``sandboxd up``), the public API is open, as on a developer machine.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from sandboxd.errors import status_trailers, unauthenticated

PUBLIC_PREFIX = "/coreweave.sandbox.v1beta2."


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Rejects public RPCs whose bearer token is not one of the configured API keys."""

    def __init__(self, api_keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in api_keys if key]

    def _allowed(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        for key, value in metadata:
            if key.lower() != "authorization":
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer":
                return False
            return any(hmac.compare_digest(token.strip().encode(), k) for k in self._keys)
        return False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Pass allowed calls on; answer others with UNAUTHENTICATED."""
        method = handler_call_details.method or ""
        if not self._keys or not method.startswith(PUBLIC_PREFIX):
            return await continuation(handler_call_details)
        if self._allowed(handler_call_details.invocation_metadata or ()):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _rejecting(handler)


def _rejecting(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same streaming shape that fails with UNAUTHENTICATED."""
    error = unauthenticated(
        "missing or invalid API key: set CWSANDBOX_API_KEY to a key this server accepts"
    )

    async def deny(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.code, error.message, trailing_metadata=status_trailers(error))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
