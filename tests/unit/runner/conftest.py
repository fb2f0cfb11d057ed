"""A tiny in-process stand-in for the control plane's ``RunnerService``, for the agent tests.

The real control plane lives in ``src/sandboxd/controlplane`` and its integration tests with
real runners are written there (by the lead). Here we only need a real ``grpc.aio`` server on
127.0.0.1 that speaks the runner protocol, records what arrives and can be told to reject, so
the agent's wire behaviour (register first, heartbeats, redials, rejection) is tested for real.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc
from tests.support.ports import free_port
from tests.unit.runner.exec_standin import bearer_of


def task_stacks() -> str:
    """Where every task of the running loop waits: for a failure that would be a hang."""
    stacks = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=stacks)
    return stacks.getvalue()


@dataclass
class Received:
    """One message as the fake control plane saw it."""

    connection: int
    message: runner_pb2.RunnerMessage
    at: float
    # The call's ``authorization`` metadata (join token or credential), "" if none.
    bearer: str = ""


@dataclass
class FakeControlPlane(runner_pb2_grpc.RunnerServiceServicer):
    """Serve ``Connect``: answer ``register`` with ``Registered``, then record heartbeats."""

    heartbeat_interval_ms: int = 0
    profile_names: Sequence[str] = ()
    # Issued in Registered to a runner that joined with a token (as the control plane does).
    credential: str = "issued-credential"
    reject: grpc.StatusCode | None = None
    # Refuse (UNAUTHENTICATED) only connections presenting this secret, e.g. a revoked one.
    reject_bearer: str | None = None
    # Behaviour after Registered: "stay" (read until the runner leaves) or "close" (end cleanly).
    after_register: str = "stay"
    # Extra ControlMessages pushed right after Registered.
    extra: Sequence[runner_pb2.ControlMessage] = ()
    received: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    connections: int = 0
    ended: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    server: grpc.aio.Server | None = None
    port: int = 0
    # Serves RunnerService.Operate when set (an ExecStandin).
    exec_standin: Any = None
    _pushed: asyncio.Queue[runner_pb2.ControlMessage | None] | None = None

    async def start(self, port: int | None = None) -> int:
        """Listen on 127.0.0.1:``port`` (default: ``self.port``, 0 = any free port)."""
        self.server = grpc.aio.server()
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(self, self.server)
        wanted = self.port if port is None else port
        self.port = self.server.add_insecure_port(f"127.0.0.1:{wanted}")
        assert self.port, f"could not bind 127.0.0.1:{wanted}"
        await self.server.start()
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            stopping = asyncio.ensure_future(server.stop(None))
            done, _ = await asyncio.wait({stopping}, timeout=20)
            if not done:  # fail showing where every task is, not at the 300 s limit
                raise AssertionError(f"the fake control plane did not stop:\n{task_stacks()}")
            await stopping

    async def __aenter__(self) -> FakeControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def next_message(self, kind: str | None = None, timeout: float = 5.0) -> Received:
        """The next recorded message (of ``kind``, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self.received.get()
                if kind is None or item.message.WhichOneof("message") == kind:
                    return item

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.connections += 1
        connection = self.connections
        loop = asyncio.get_running_loop()
        context.add_done_callback(lambda _ctx: self.ended.put_nowait(connection))
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        bearer = bearer_of(context)
        self.received.put_nowait(Received(connection, first, loop.time(), bearer))
        if self.reject is not None:
            await context.abort(self.reject, "join token is not valid")
        if self.reject_bearer is not None and bearer == self.reject_bearer:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "credential was revoked")
        if first.WhichOneof("message") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register must come first")
        yield runner_pb2.ControlMessage(
            registered=runner_pb2.Registered(
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                profile_names=list(self.profile_names),
                credential=self.credential if bearer != self.credential else "",
            )
        )
        for message in self.extra:
            yield message
        if self.after_register == "close":
            return
        pushed: asyncio.Queue[runner_pb2.ControlMessage | None] = asyncio.Queue()
        self._pushed = pushed

        async def read_all() -> None:
            try:
                while True:
                    message = await context.read()
                    if message is grpc.aio.EOF:
                        return
                    self.received.put_nowait(Received(connection, message, loop.time(), bearer))
            finally:
                pushed.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            while (message := await pushed.get()) is not None:
                yield message
        finally:
            reader.cancel()

    def push(self, **command: object) -> None:
        """Send a command down the current connection (``push(request_id=..., start=...)``)."""
        assert self._pushed is not None, "no runner is connected"
        message = runner_pb2.ControlMessage(command=runner_pb2.Command(**command))  # type: ignore[arg-type]
        self._pushed.put_nowait(message)

    async def Operate(self, request_iterator, context):  # type: ignore[no-untyped-def]
        """Operation streams go to ``exec_standin`` (tests/unit/runner/exec_standin.py) if set."""
        if self.exec_standin is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no operations in this test")
        async for message in self.exec_standin.Operate(request_iterator, context):
            yield message


@pytest.fixture
def unused_port() -> int:
    """A port that nothing listens on right now (for "control plane is down" tests)."""
    return free_port()


@pytest.fixture
def fake_control_plane() -> type[FakeControlPlane]:
    """The fake's class; tests build it inside their own event loop."""
    return FakeControlPlane
