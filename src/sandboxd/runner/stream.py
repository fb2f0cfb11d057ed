"""The runner's side of one ``RunnerService.Connect`` call.

Why a wrapper: grpc.aio allows one outstanding read and one outstanding write per call. There
is exactly one reader (the agent's dispatch loop), but many writers: the heartbeat loop now,
and command handlers replying to the control plane later. :class:`ControlStream` serialises
writes with a lock so those writers never interleave or trip grpc's "write already pending".
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio

from sandboxd.runner.settings import ControlPlaneAddress
from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc

MAX_MESSAGE_BYTES = 100 * 1024 * 1024
ConnectCall = grpc.aio.StreamStreamCall[runner_pb2.RunnerMessage, runner_pb2.ControlMessage]


Metadata = tuple[tuple[str, str], ...]


PROPOSED_CREDENTIAL_HEADER = "sandboxd-proposed-credential"
"""Metadata of a first join: the credential the runner stored before it (``agent._propose``)."""


def bearer(secret: str) -> Metadata:
    """Call metadata that authenticates a runner call (credential or join token)."""
    return (("authorization", f"Bearer {secret}"),)


def open_channel(
    address: ControlPlaneAddress,
    *,
    keepalive_interval: float | None = None,
    ca_file: Path | None = None,
) -> grpc.aio.Channel:
    """A fresh channel per session, so each redial re-resolves DNS and starts clean.

    Message limits match the control plane's (100 MiB): unary file writes and reads of up
    to 32 MiB travel on the control stream, far above gRPC's 4 MiB default. TLS trusts
    ``ca_file`` when given, else the system's roots (or ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
    """
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Its own connections: gRPC otherwise shares them between channels of the same
        # target and options, and a redial's channel could take over the last session's
        # connection, still open while that channel closes, instead of starting clean.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if keepalive_interval is not None:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_interval * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
    if address.secure:
        roots = ca_file.read_bytes() if ca_file is not None else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.aio.secure_channel(address.target, credentials, options=options)
    return grpc.aio.insecure_channel(address.target, options=options)


RunnerChannel = Any
"""A ``grpc.aio.Channel`` to a remote control plane, or an in-process link to the control plane
of this process (:class:`~sandboxd.controlplane.local_link.LocalRunnerLink`): both give
``Connect`` and ``Operate`` calls and ``close()``."""


def runner_stub(channel: RunnerChannel) -> Any:
    """What ``Connect`` and ``Operate`` calls are made on.

    The generated stub of a gRPC channel, or the in-process link itself (it offers the same
    two methods).
    """
    if isinstance(channel, grpc.aio.Channel):
        return runner_pb2_grpc.RunnerServiceStub(channel)  # type: ignore[no-untyped-call]
    return channel


class ControlStream:
    """One open ``Connect`` call: serialised :meth:`send`, and :meth:`receive` for one reader."""

    def __init__(self, channel: RunnerChannel, metadata: Metadata = ()) -> None:
        # The stub is untyped; the cast below restores the call's real type.
        self._call = cast(ConnectCall, runner_stub(channel).Connect(metadata=metadata))
        self._write_lock = asyncio.Lock()

    async def send(self, message: runner_pb2.RunnerMessage) -> None:
        """Write one message; safe to call from several tasks at once."""
        async with self._write_lock:
            await self._call.write(message)

    async def receive(self) -> runner_pb2.ControlMessage | None:
        """The next control message, or ``None`` when the control plane ended the stream.

        A non-OK end (abort, broken connection) raises ``grpc.aio.AioRpcError``.
        """
        message = await self._call.read()
        # Anything but a ControlMessage is grpc.aio.EOF (which the type stubs do not export).
        return message if isinstance(message, runner_pb2.ControlMessage) else None

    def cancel(self) -> None:
        """Abandon the call (on shutdown or when the session ends)."""
        self._call.cancel()
