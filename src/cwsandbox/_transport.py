"""gRPC ``aio`` channels for sandbox calls, with errors translated in one place.

Each ``Sandbox`` owns one ``Transport``: a channel for unary calls and a second one for
streams (as the official client does, so a long exec never queues behind unary traffic on
the same HTTP/2 connection's flow-control window). The channels themselves are shared by
every transport to the same control plane in the process (``_shared_channels.py`` says why
and how that stays safe across forks, loops and changed credentials). Credentials are read
once, when the transport is made. Class-level calls (``Sandbox.list``, ``from_id``,
``delete``) use a short-lived transport per call, so they read the environment each time.

A transport takes its share of the channels on first use and gives it back on ``close()``
(after ``stop()``); a later ``get_status()`` simply takes it again.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from cwsandbox import _shared_channels
from cwsandbox._config import Endpoint, auth_metadata
from cwsandbox._error_mapping import sandbox_error
from cwsandbox.exceptions import SandboxTimeoutError
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import streaming_pb2 as st

__all__ = ["GATEWAY", "STREAMING", "ExecCall", "InteractiveExecCall", "LogsCall", "Transport"]

GATEWAY = "/coreweave.sandbox.v1beta2.GatewayService/"
STREAMING = "/coreweave.sandbox.v1beta2.GatewayStreamingService/"

ResponseT = TypeVar("ResponseT", bound=Message)
NO_STDIN = ("sandboxd-no-stdin", "1")
#: sandboxd extensions in call metadata (``sandboxd.controlplane.call_headers`` says why):
#: Start's answer lists them; an exec with ``EXEC_WAIT`` may be sent before RUNNING, and its
#: answer's initial metadata carries the sandbox as Get would answer it.
FEATURES_HEADER = "sandboxd-features"
EXEC_WAITS_FEATURE = "exec-waits-running"
EXEC_WAIT = ("sandboxd-exec-wait-running", "1")
SANDBOX_HEADER = "sandboxd-sandbox-bin"
InteractiveExecCall = grpc.aio.StreamStreamCall[st.ExecStreamRequest, st.ExecStreamResponse]
"""A StreamExec call that takes stdin (and resize) frames after ``init``."""
ExecCall = (
    InteractiveExecCall | grpc.aio.UnaryStreamCall[st.ExecStreamRequest, st.ExecStreamResponse]
)
"""A StreamExec call: interactive, or ``init`` alone (sent with the half-close)."""
LogsCall = grpc.aio.StreamStreamCall[st.LogStreamRequest, st.LogStreamResponse]


class Transport:
    """The channels of one sandbox handle (shared with other handles), and its metadata."""

    def __init__(self, endpoint: Endpoint, metadata: tuple[tuple[str, str], ...] | None = None):
        self.endpoint = endpoint
        self.metadata = auth_metadata() if metadata is None else metadata
        self._shared: _shared_channels.SharedChannels | None = None

    def _channels(self) -> _shared_channels.SharedChannels:
        if self._shared is None:
            self._shared = _shared_channels.acquire(self.endpoint)
        return self._shared

    def _unary_rpc(
        self, method: str, request_type: type[Message], response_type: type[Message]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """``GatewayService/<method>`` on the shared unary channel."""
        return (
            self._channels()
            .unary()
            .unary_unary(
                GATEWAY + method,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
        )

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float,
        operation: str,
        sandbox_id: str | None = None,
        filepath: str | None = None,
        snapshot_call: bool = False,
        file_system_snapshot_id: str | None = None,
    ) -> ResponseT:
        """Call ``GatewayService/<method>``; every gRPC error becomes a cwsandbox error.

        ``snapshot_call`` marks the snapshot RPCs, whose NOT_FOUND is a missing snapshot.
        """
        rpc = self._unary_rpc(method, type(request), response_type)
        try:
            response = await rpc(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise sandbox_error(
                err,
                operation=operation,
                sandbox_id=sandbox_id,
                filepath=filepath,
                file_system_snapshot_id=file_system_snapshot_id,
                snapshot_call=snapshot_call,
            ) from None
        if not isinstance(response, response_type):  # pragma: no cover - deserializer guarantees
            raise TypeError(f"{method} returned {type(response).__name__}")
        return response

    async def start(
        self, request: gw.StartSandboxRequest, *, timeout: float
    ) -> tuple[gw.StartSandboxResponse, frozenset[str]]:
        """Call Start; its answer and the extensions the server offered (``FEATURES_HEADER``)."""
        rpc = self._unary_rpc("Start", gw.StartSandboxRequest, gw.StartSandboxResponse)
        call = rpc(request, timeout=timeout, metadata=self.metadata)
        try:
            response = await call
            trailers = await call.trailing_metadata()
        except grpc.RpcError as err:
            raise sandbox_error(err, operation="start") from None
        features: set[str] = set()
        for key, value in trailers or ():
            if key == FEATURES_HEADER and isinstance(value, str):
                features.update(part.strip() for part in value.split(","))
        return response, frozenset(features)

    async def streaming_channel(self, ready_timeout: float) -> grpc.aio.Channel:
        """The streaming channel, connected; ``SandboxTimeoutError`` if that takes too long."""
        channel = self._channels().stream()
        if channel.get_state(try_to_connect=False) is not grpc.ChannelConnectivity.READY:
            try:
                await asyncio.wait_for(channel.channel_ready(), ready_timeout)
            except TimeoutError:
                raise SandboxTimeoutError(
                    f"could not connect a streaming channel to {self.endpoint.base_url} "
                    f"within {ready_timeout:g}s"
                ) from None
        return channel

    async def open_exec(
        self,
        first: st.ExecStreamRequest,
        *,
        timeout: float | None,
        ready_timeout: float,
        stdin: bool = True,
        wait_running: bool = False,
    ) -> ExecCall:
        """Open a StreamExec call with deadline ``timeout`` (None: no deadline, for terminals).

        ``first`` (the ``init`` frame) is sent at once. With ``stdin`` the caller writes
        the rest of the requests; ``stdin=False`` promises none after ``init``, and the
        call then goes out as a server-streaming one: ``init`` and the half-close leave in
        one batch, the wire is the same (HTTP/2 does not know the difference) and the
        server's StreamExec reads one request and end of input, but the client spares the
        separate write and half-close (a fifth of its CPU per exec, measured).
        ``wait_running`` asks a server that offered it to wait for a starting sandbox.
        The streaming channel is first given ``ready_timeout`` seconds to connect; a server
        that cannot be reached in that time gives ``SandboxTimeoutError``.
        """
        channel = await self.streaming_channel(ready_timeout)
        # Without stdin, sandboxd needs no frame after init and sends no ``ready`` (servers
        # that do not know the header ignore it and follow §5 in full).
        metadata = self.metadata if stdin else (*self.metadata, NO_STDIN)
        if wait_running:
            metadata = (*metadata, EXEC_WAIT)
        if not stdin:
            single = channel.unary_stream(
                STREAMING + "StreamExec",
                request_serializer=st.ExecStreamRequest.SerializeToString,
                response_deserializer=st.ExecStreamResponse.FromString,
            )
            return single(first, timeout=timeout, metadata=metadata)
        multi = channel.stream_stream(
            STREAMING + "StreamExec",
            request_serializer=st.ExecStreamRequest.SerializeToString,
            response_deserializer=st.ExecStreamResponse.FromString,
        )
        # No request iterator: requests are written with call.write() (grpc-stubs lag here).
        call: InteractiveExecCall = multi(timeout=timeout, metadata=metadata)  # type: ignore[call-arg]
        try:
            await call.write(first)
        except BaseException:
            call.cancel()
            raise
        return call

    async def open_logs(self, *, timeout: float | None, ready_timeout: float) -> LogsCall:
        """Open a StreamLogs call (deadline ``timeout``, None for follow); caller writes."""
        channel = await self.streaming_channel(ready_timeout)
        multi = channel.stream_stream(
            STREAMING + "StreamLogs",
            request_serializer=st.LogStreamRequest.SerializeToString,
            response_deserializer=st.LogStreamResponse.FromString,
        )
        call: LogsCall = multi(timeout=timeout, metadata=self.metadata)  # type: ignore[call-arg]
        return call

    async def close(self) -> None:
        """Give back this handle's share of the channels; the next call takes it again.

        The channels stay open for other handles (``_shared_channels`` closes idle ones
        beyond its bound), so a call still in flight on them is not cancelled.
        """
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.release()
