"""Test helpers for the supervisor: a real ``RunnerService.Exec`` server and an outbox.

:class:`ExecStandin` is an in-process grpc.aio server on 127.0.0.1 that accepts the runner's
exec streams the way the control plane does: it reads ``hello``, records every response
frame, lets the test push ``ExecStreamRequest`` frames down, and (like the control plane)
ends the call once it has seen ``exit`` or ``error``. Log streams likewise: frames are
recorded, and the call ends after ``complete``/``error`` or when the test ends it. The real
control plane's side is tested with the control plane; this only pins the runner's half of
the wire.

:class:`Outbox` records what the supervisor sends (results and events) in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from cwsandbox._proto import streaming_pb2
from sandboxd._proto import runner_pb2, runner_pb2_grpc
from sandboxd.images import ImageStore
from sandboxd.runner.exec_relay import ExecCall, dial_exec
from sandboxd.runner.log_relay import LogsCall, dial_logs
from sandboxd.runner.resources import Reservation, ReservationLedger
from sandboxd.runner.supervisor import SandboxSupervisor
from tests.unit.runner.backend_standin import StandinBackend


def bearer_of(context: Any) -> str:
    """The token of a call's ``authorization: Bearer`` metadata, "" if none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value).removeprefix("Bearer ")
    return ""


Response = streaming_pb2.ExecStreamResponse
Request = streaming_pb2.ExecStreamRequest


@dataclass
class ExecStream:
    """One exec stream as the stand-in control plane sees it."""

    hello: runner_pb2.ExecUpstream.Hello
    bearer: str
    frames: asyncio.Queue[Response | None] = field(default_factory=asyncio.Queue)
    downstream: asyncio.Queue[Request | None] = field(default_factory=asyncio.Queue)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, timeout: float = 5.0) -> Response | None:
        """The next frame from the runner (None: the runner's side ended)."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def until_end(self, timeout: float = 5.0) -> list[Response]:
        """Every frame up to the end of the runner's side."""
        got: list[Response] = []
        while (frame := await self.next(timeout)) is not None:
            got.append(frame)
        return got

    def push(self, **request: Any) -> None:
        """Send one frame to the runner, e.g. ``push(stdin=ExecStreamData(data=b"x"))``."""
        self.downstream.put_nowait(Request(**request))

    def end_call(self) -> None:
        """End the call from the control plane's side (as when the client goes away)."""
        self.downstream.put_nowait(None)


@dataclass
class LogStream:
    """One log stream as the stand-in control plane sees it."""

    hello: runner_pb2.ExecUpstream.Hello
    bearer: str
    frames: asyncio.Queue[streaming_pb2.LogStreamResponse | None] = field(
        default_factory=asyncio.Queue
    )
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, timeout: float = 5.0) -> streaming_pb2.LogStreamResponse | None:
        """The next frame from the runner (None: the runner's side ended)."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def until_end(self, timeout: float = 5.0) -> list[streaming_pb2.LogStreamResponse]:
        """Every frame up to the end of the runner's side."""
        got: list[streaming_pb2.LogStreamResponse] = []
        while (frame := await self.next(timeout)) is not None:
            got.append(frame)
        return got

    def end_call(self) -> None:
        """End the call from the control plane's side (a follow the client closed)."""
        self.stop.set()


class ExecStandin(runner_pb2_grpc.RunnerServiceServicer):
    """Serves ``Exec`` and ``Logs``; streams are announced by stream id."""

    def __init__(self) -> None:
        self.streams: dict[str, ExecStream] = {}
        self.log_streams: dict[str, LogStream] = {}
        self._arrived: asyncio.Queue[ExecStream] = asyncio.Queue()
        self._logs_arrived: asyncio.Queue[LogStream] = asyncio.Queue()
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None
        self.port = 0

    async def __aenter__(self) -> ExecStandin:
        self.server = grpc.aio.server()
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.channel is not None:
            await self.channel.close(None)
        if self.server is not None:
            await self.server.stop(None)

    async def dial(self, stream_id: str) -> ExecCall:
        """The runner's exec dialer, over a real channel to this server."""
        assert self.channel is not None
        return await dial_exec(self.channel, stream_id, "runner-1", "token-1")

    async def dial_logs(self, stream_id: str) -> LogsCall:
        """The runner's logs dialer, over a real channel to this server."""
        assert self.channel is not None
        return await dial_logs(self.channel, stream_id, "runner-1", "token-1")

    async def log_stream(self, stream_id: str, timeout: float = 5.0) -> LogStream:
        """Wait until the runner has dialled the log stream ``stream_id``."""
        async with asyncio.timeout(timeout):
            while stream_id not in self.log_streams:
                await self._logs_arrived.get()
        return self.log_streams[stream_id]

    async def Logs(
        self, request_iterator: AsyncIterator[runner_pb2.LogsUpstream], context: Any
    ) -> AsyncIterator[runner_pb2.LogsControl]:
        first = await anext(request_iterator)
        stream = LogStream(first.hello, bearer_of(context))
        self.log_streams[first.hello.stream_id] = stream
        self._logs_arrived.put_nowait(stream)

        async def relay_up() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for frame in request_iterator:
                    stream.frames.put_nowait(frame.response)
                    if frame.response.WhichOneof("response") in ("complete", "error"):
                        stream.stop.set()  # as the control plane does
            stream.frames.put_nowait(None)

        pump = asyncio.create_task(relay_up())
        try:
            await stream.stop.wait()
        finally:
            stream.ended.set()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return
        yield  # an (empty) response stream

    async def stream(self, stream_id: str, timeout: float = 5.0) -> ExecStream:
        """Wait until the runner has dialled ``stream_id``."""
        async with asyncio.timeout(timeout):
            while stream_id not in self.streams:
                await self._arrived.get()
        return self.streams[stream_id]

    async def Exec(
        self, request_iterator: AsyncIterator[runner_pb2.ExecUpstream], context: Any
    ) -> AsyncIterator[Request]:
        first = await anext(request_iterator)
        stream = ExecStream(first.hello, bearer_of(context))
        self.streams[first.hello.stream_id] = stream
        self._arrived.put_nowait(stream)

        async def relay_up() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for frame in request_iterator:
                    stream.frames.put_nowait(frame.response)
                    if frame.response.WhichOneof("response") in ("exit", "error"):
                        stream.downstream.put_nowait(None)  # as the control plane does
            stream.frames.put_nowait(None)

        pump = asyncio.create_task(relay_up())
        try:
            while (request := await stream.downstream.get()) is not None:
                yield request
        finally:
            stream.ended.set()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


@dataclass
class Outbox:
    """What the supervisor sent, in order; ``fail`` makes sends raise (a lost connection)."""

    messages: list[runner_pb2.RunnerMessage] = field(default_factory=list)
    arrived: asyncio.Queue[runner_pb2.RunnerMessage] = field(default_factory=asyncio.Queue)
    fail: bool = False

    async def send(self, message: runner_pb2.RunnerMessage) -> None:
        if self.fail:
            raise ConnectionError("not connected")
        self.messages.append(message)
        self.arrived.put_nowait(message)

    async def next(self, kind: str | None = None, timeout: float = 5.0) -> runner_pb2.RunnerMessage:
        """The next message (of ``kind``: "result" or "event"), skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.arrived.get()
                if kind is None or message.WhichOneof("message") == kind:
                    return message

    async def result(self, request_id: str, timeout: float = 5.0) -> runner_pb2.CommandResult:
        """The result of ``request_id`` (other messages are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next("result")
                if message.result.request_id == request_id:
                    return message.result

    def kinds(self) -> list[str]:
        """``result:<id>`` / ``event:<phase>`` for every message so far, in order."""
        out = []
        for m in self.messages:
            if m.WhichOneof("message") == "result":
                out.append(f"result:{m.result.request_id}")
            else:
                out.append(f"event:{runner_pb2.SandboxPhase.Name(m.event.phase)}")
        return out


CAPACITY = Reservation(cpu_millicores=4000, memory_bytes=8 << 30, gpu_count=0)


def image_store(tmp_path: Path) -> ImageStore:
    """A store with one image, ``busybox:latest``, whose rootfs is an empty directory."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    store = ImageStore(tmp_path / "data", cache=tmp_path / "cache")
    store.publish("busybox:latest", rootfs, source="test", link=True)
    return store


@dataclass
class Rig:
    """A supervisor over a stand-in backend, with its outbox, ledger and exec server."""

    supervisor: SandboxSupervisor
    backend: StandinBackend
    ledger: ReservationLedger
    outbox: Outbox
    execs: ExecStandin

    def command(self, request_id: str, **action: Any) -> None:
        self.supervisor.handle(runner_pb2.Command(request_id=request_id, **action))

    async def run(self, request_id: str, **action: Any) -> runner_pb2.CommandResult:
        self.command(request_id, **action)
        return await self.outbox.result(request_id)


def spec(sandbox_id: str = "sb-1", **fields: Any) -> runner_pb2.SandboxSpec:
    """A valid spec for the stand-in image, with a 1 CPU / 1 GiB reservation."""
    base: dict[str, Any] = {
        "sandbox_id": sandbox_id,
        "image": "busybox:latest",
        "reservation": runner_pb2.Reservation(cpu_millicores=1000, memory_bytes=1 << 30),
    }
    base.update(fields)
    return runner_pb2.SandboxSpec(**base)


def start(s: runner_pb2.SandboxSpec) -> dict[str, Any]:
    return {"start": runner_pb2.StartSandbox(spec=s)}


def stop(sandbox_id: str = "sb-1", grace: int = 3) -> dict[str, Any]:
    return {"stop": runner_pb2.StopSandbox(sandbox_id=sandbox_id, grace_seconds=grace)}


def run_rig(
    tmp_path: Path,
    body: Callable[[Rig], Any],
    *,
    backend: StandinBackend | None = None,
    records: bool = True,
    **options: Any,
) -> None:
    """Build a rig inside a fresh event loop, run ``body(rig)``, always close everything."""

    async def main() -> None:
        async with ExecStandin() as execs:
            outbox = Outbox()
            ledger = ReservationLedger(CAPACITY)
            the_backend = backend or StandinBackend(images=image_store(tmp_path))
            supervisor = SandboxSupervisor(
                the_backend,
                ledger,
                outbox.send,
                execs.dial,
                records_dir=tmp_path / "records" if records else None,
                public_host="runner.example",
                logs_dialer=execs.dial_logs,
                **options,
            )
            try:
                await body(Rig(supervisor, the_backend, ledger, outbox, execs))
            finally:
                await supervisor.close()

    asyncio.run(main())
