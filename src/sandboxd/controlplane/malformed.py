"""Turn undecodable request bytes into INVALID_ARGUMENT instead of an opaque INTERNAL.

Why an interceptor: gRPC Python decodes a request before any handler runs, and when decoding
fails (invalid UTF-8 in a string field, truncated bytes, a wrong wire type) it answers
INTERNAL "Exception deserializing request!", which tells the caller nothing. This interceptor
wraps each method's deserializer so a bad message becomes a marker, and the handler wrapper
answers INVALID_ARGUMENT naming the message type and the decoder's reason. Both unary and
streaming requests are covered; the server keeps serving everyone else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sandboxd.errors import abort_with, invalid_argument


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request message whose bytes could not be decoded."""

    reason: str


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Malformed(str(exc))

    return decode


def _error(malformed: Malformed) -> Any:
    return invalid_argument("request", f"could not be decoded: {malformed.reason}")


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            await abort_with(context, _error(request))
        yield request


def _wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Malformed):
            await abort_with(context, _error(request))
        return await behavior(request, context)

    return unary


def _wrap_unary_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Malformed):
            await abort_with(context, _error(request))
        async for response in behavior(request, context):
            yield response

    return unary_stream


def _wrap_stream_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(_checked(requests, context), context)

    return stream_unary


def _wrap_stream_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for response in behavior(_checked(requests, context), context):
            yield response

    return stream_stream


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers undecodable requests with INVALID_ARGUMENT on every method."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the method's deserializer and behaviour."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        replaced: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        for kind, wrap in (
            ("unary_unary", _wrap_unary),
            ("unary_stream", _wrap_unary_stream),
            ("stream_unary", _wrap_stream_unary),
            ("stream_stream", _wrap_stream_stream),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                replaced[kind] = wrap(behavior)
        return handler._replace(**replaced)  # type: ignore[attr-defined,no-any-return]
