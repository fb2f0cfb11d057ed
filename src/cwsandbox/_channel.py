"""Opening gRPC channels and making typed unary calls on them.

Discovery calls are rare and short, so each one opens a fresh channel and closes it when
done (as the official client does); nothing is left running in the background. Calls go
through ``unary_call`` rather than the generated stubs because the stubs are untyped, and
this keeps the rest of the client checked by mypy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from cwsandbox._config import MAX_MESSAGE_BYTES, Endpoint, auth_metadata, tls_credentials
from cwsandbox._fork_guard import refuse_after_fork

__all__ = ["CHANNEL_OPTIONS", "open_channel", "unary_call"]

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

ResponseT = TypeVar("ResponseT", bound=Message)


@contextmanager
def open_channel(endpoint: Endpoint) -> Iterator[grpc.Channel]:
    """Yield a channel to ``endpoint`` and close it afterwards.

    ``http://`` gives a plaintext (h2c) channel, ``https://`` a TLS channel with the
    system's root certificates (or ``$CWSANDBOX_CA_FILE``).
    """
    refuse_after_fork()
    if endpoint.secure:
        channel = grpc.secure_channel(endpoint.target, tls_credentials(), options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(endpoint.target, options=CHANNEL_OPTIONS)
    try:
        yield channel
    finally:
        channel.close()


def unary_call(
    channel: grpc.Channel,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    *,
    timeout: float,
) -> ResponseT:
    """Call the unary RPC ``method`` (full path) and return its typed response.

    The API key header is attached here, read fresh from the environment, so every RPC
    carries the current credentials. gRPC errors propagate as ``grpc.RpcError``; callers
    translate them with ``cwsandbox._error_mapping``.
    """
    rpc = channel.unary_unary(
        method,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = rpc(request, timeout=timeout, metadata=auth_metadata())
    if not isinstance(response, response_type):  # pragma: no cover - deserializer guarantees
        raise TypeError(f"{method} returned {type(response).__name__}")
    return response
