"""Test helpers for the supervisor: a real ``RunnerService.Operate`` server and an outbox.

:class:`ExecStandin` is an in-process grpc.aio server on 127.0.0.1 that binds operations to
the runner's ``Operate`` calls the way the control plane does: the test names the operation
(:meth:`ExecStandin.bind`, the first ``OperationDown``), the next idle call receives it, every
frame the runner sends back is recorded, the test can push input down, and (like the control
plane) the call ends once ``exit``/``error`` (exec), ``complete``/``error`` (logs) or
``done`` (files) arrived. Without an agent (a supervisor alone), ``bind`` also plays the
runner's pool: it opens the call and hands it to :meth:`SandboxSupervisor.operate`. The real
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

from sandboxd.images import ImageStore
from sandboxd.runner.exec_relay import OperateCall
from sandboxd.runner.resources import Reservation, ReservationLedger
from sandboxd.runner.stream import bearer
from sandboxd.runner.supervisor import SandboxSupervisor
from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.unit.runner.backend_standin import StandinBackend


def bearer_of(context: Any) -> str:
    """The token of a call's ``authorization: Bearer`` metadata, "" if none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value).removeprefix("Bearer ")
    return ""


Request = streaming_pb2.ExecStreamRequest
_LAST = {
    "exec": ("exit", "error"),
    "logs": ("complete", "error"),
}


def _payload(kind: str, frame: runner_pb2.OperationUp) -> Any:
    """What a test looks at: the exec/log response, or the file frame itself."""
    return getattr(frame, kind) if kind in ("exec", "logs") else frame


def _is_last(kind: str, frame: runner_pb2.OperationUp) -> bool:
    if kind in _LAST:
        return getattr(frame, kind).WhichOneof("response") in _LAST[kind]
    return frame.WhichOneof("frame") == "done"


@dataclass
class ExecStream:
    """One bound operation as the stand-in control plane sees it."""

    open: runner_pb2.OperationDown
    bearer: str
    frames: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    downstream: asyncio.Queue[runner_pb2.OperationDown | None] = field(
        default_factory=asyncio.Queue
    )
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def kind(self) -> str:
        """``exec``, ``logs``, ``write_file`` or ``read_file``."""
        return str(self.open.WhichOneof("frame"))

    async def next(self, timeout: float = 5.0) -> Any:
        """The next frame from the runner (None: the runner's side ended)."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def until_end(self, timeout: float = 5.0) -> list[Any]:
        """Every frame up to the end of the runner's side."""
        got: list[Any] = []
        while (frame := await self.next(timeout)) is not None:
            got.append(frame)
        return got

    def push(self, **request: Any) -> None:
        """Send one exec input frame, e.g. ``push(stdin=ExecStreamData(data=b"x"))``."""
        self.downstream.put_nowait(runner_pb2.OperationDown(input=Request(**request)))

    def send(self, **frame: Any) -> None:
        """Send one raw frame, e.g. ``send(data=b"...")`` or ``send(end=DataEnd())``."""
        self.downstream.put_nowait(runner_pb2.OperationDown(**frame))

    def end_call(self) -> None:
        """End the call from the control plane's side (as when the client goes away)."""
        self.downstream.put_nowait(None)


# Log streams are operations like any other.
LogStream = ExecStream


class ExecStandin(runner_pb2_grpc.RunnerServiceServicer):
    """Serves ``Operate``; bound operations are announced by stream id."""

    def __init__(self) -> None:
        self.streams: dict[str, ExecStream] = {}
        self._arrived: asyncio.Queue[ExecStream] = asyncio.Queue()
        self._pending: asyncio.Queue[runner_pb2.OperationDown] = asyncio.Queue()
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None
        self.port = 0
        self._runs: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ExecStandin:
        self.server = grpc.aio.server()
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close(None)
        if self.server is not None:
            await self.server.stop(None)

    def bind(
        self,
        first: runner_pb2.OperationDown,
        run: Callable[[runner_pb2.OperationDown, OperateCall], Any] | None = None,
    ) -> None:
        """Bind ``first`` to the next idle call; with ``run``, open that call too (the pool)."""
        self._pending.put_nowait(first)
        if run is not None:
            task = asyncio.ensure_future(self._play_pool(run))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _play_pool(self, run: Callable[[runner_pb2.OperationDown, OperateCall], Any]) -> None:
        assert self.channel is not None
        stub = runner_pb2_grpc.RunnerServiceStub(self.channel)  # type: ignore[no-untyped-call]
        call = stub.Operate(metadata=bearer("token-1"))
        first = await call.read()
        if isinstance(first, runner_pb2.OperationDown):
            await run(first, call)

    async def stream(self, stream_id: str, timeout: float = 5.0) -> ExecStream:
        """Wait until the operation ``stream_id`` is bound."""
        async with asyncio.timeout(timeout):
            while stream_id not in self.streams:
                await self._arrived.get()
        return self.streams[stream_id]

    log_stream = stream

    async def Operate(
        self, request_iterator: AsyncIterator[runner_pb2.OperationUp], context: Any
    ) -> AsyncIterator[runner_pb2.OperationDown]:
        first = await self._pending.get()
        kind = str(first.WhichOneof("frame"))
        stream = ExecStream(first, bearer_of(context))
        self.streams[getattr(first, kind).stream_id] = stream
        self._arrived.put_nowait(stream)

        async def relay_up() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for frame in request_iterator:
                    stream.frames.put_nowait(_payload(kind, frame))
                    if _is_last(kind, frame):
                        stream.downstream.put_nowait(None)  # as the control plane does
            stream.frames.put_nowait(None)

        pump = asyncio.create_task(relay_up())
        try:
            yield first
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

    def operate(self, **first: Any) -> None:
        """Bind an operation (``exec=OpenExec(...)``, ``logs=...``, ``write_file=...``)."""
        self.execs.bind(runner_pb2.OperationDown(**first), self.supervisor.operate)

    async def write_file(
        self, path: str, data: bytes, sandbox_id: str = "sb-1"
    ) -> runner_pb2.FileDone:
        """A file write over its own operation, as the control plane sends one."""
        stream_id = f"w{len(self.execs.streams)}"
        self.operate(
            write_file=runner_pb2.OpenFileWrite(
                stream_id=stream_id, sandbox_id=sandbox_id, path=path
            )
        )
        stream = await self.execs.stream(stream_id)
        if data:
            stream.send(data=data)
        stream.send(end=runner_pb2.DataEnd())
        frames = await stream.until_end()
        assert frames and frames[-1].WhichOneof("frame") == "done", frames
        return frames[-1].done  # type: ignore[no-any-return]

    async def read_file(
        self, path: str, sandbox_id: str = "sb-1", max_bytes: int = 0
    ) -> tuple[int | None, bytes, runner_pb2.FileDone]:
        """A file read: the size ``opened`` said (None if none came), the bytes, ``done``."""
        stream_id = f"r{len(self.execs.streams)}"
        self.operate(
            read_file=runner_pb2.OpenFileRead(
                stream_id=stream_id, sandbox_id=sandbox_id, path=path, max_bytes=max_bytes
            )
        )
        frames = await (await self.execs.stream(stream_id)).until_end()
        size = next((f.opened.size for f in frames if f.WhichOneof("frame") == "opened"), None)
        data = b"".join(f.data for f in frames if f.WhichOneof("frame") == "data")
        assert frames and frames[-1].WhichOneof("frame") == "done", frames
        return size, data, frames[-1].done

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
                records_dir=tmp_path / "records" if records else None,
                public_host="runner.example",
                **options,
            )
            try:
                await body(Rig(supervisor, the_backend, ledger, outbox, execs))
            finally:
                await supervisor.close()

    asyncio.run(main())
