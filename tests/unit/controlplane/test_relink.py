"""Operations bound to a runner connection that dies are bound again on the next one.

The scenario is the one after a partition heals: the control plane's writes on the old
connection are stuck until keepalive closes it, and the runner redials a second later. Real
registry, links and operations; the runner's ``Operate`` handlers are played by the test
(what it offers, what it reads, what it answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sandboxd.config import load_config
from sandboxd.controlplane import operations as ops_module
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import IdleStream, RunnerLink
from sandboxd.errors import ApiError
from sandboxd.runner.recent_ids import RecentIds
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2


def connect(registry: RunnerRegistry, runner_id: str = "r1") -> tuple[RunnerLink, int]:
    register = runner_pb2.Register(
        runner_id=runner_id,
        capabilities=runner_pb2.Capabilities(cpu_millicores=4000, memory_bytes=8 << 30),
    )
    state, connection = registry.register(register)
    assert state.link is not None
    return state.link, connection


class Handler:
    """One ``Operate`` handler: what the control plane sent down, and answers to send up."""

    def __init__(self, link: RunnerLink) -> None:
        stream = link.offer()
        assert stream is not None
        self.stream: IdleStream = stream
        self.down: list[runner_pb2.OperationDown] = []
        self.up: asyncio.Queue[runner_pb2.OperationUp | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())

    async def _frames(self) -> AsyncIterator[bytes]:
        while (frame := await self.up.get()) is not None:
            yield frame.SerializeToString()  # the control plane reads them encoded

    async def _run(self) -> None:
        operation = await self.stream.bound
        if operation is None:
            return
        async for frame in operation.serve(self.stream, self._frames()):
            self.down.append(frame)

    async def opened(self) -> runner_pb2.OperationDown:
        async with asyncio.timeout(5):
            while not self.down:
                await asyncio.sleep(0.01)
        return self.down[0]


def _exit(code: int) -> runner_pb2.OperationUp:
    exit_frame = streaming_pb2.ExecStreamExit(exit_code=code)
    return runner_pb2.OperationUp(exec=streaming_pb2.ExecStreamResponse(exit=exit_frame))


def _open_exec() -> runner_pb2.OperationDown:
    return runner_pb2.OperationDown(exec=runner_pb2.OpenExec(sandbox_id="sb-1", command=["true"]))


def test_binding_costs_no_round_trip_and_the_open_carries_the_stream_id() -> None:
    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        operations = Operations(registry)
        link, _ = connect(registry)
        handler = Handler(link)
        operation = await operations.open("r1", link, _open_exec())
        first = await handler.opened()
        assert first.exec.stream_id == operation.stream_id
        handler.up.put_nowait(_exit(3))
        frame = await operation.receive()
        assert frame is not None and frame.exec.exit.exit_code == 3
        operation.close()
        assert len(operations) == 0

    asyncio.run(scenario())


def test_an_operation_lost_with_its_connection_is_bound_on_the_next_one() -> None:
    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        operations = Operations(registry)
        old, connection = connect(registry)
        stale = Handler(old)
        operation = await operations.open("r1", old, _open_exec())
        assert (await stale.opened()).exec.stream_id == operation.stream_id
        receiving = asyncio.ensure_future(operation.receive())
        registry.disconnect("r1", connection)  # keepalive closes it; the handler hangs on
        await asyncio.sleep(0.05)
        assert not receiving.done()  # waiting for the runner's next connection, not failing
        new, _ = connect(registry)  # the runner redials and offers a stream
        fresh = Handler(new)
        again = await fresh.opened()
        assert again.exec.stream_id == operation.stream_id  # the same id: the runner dedupes
        fresh.up.put_nowait(_exit(0))
        async with asyncio.timeout(2):
            frame = await receiving
        assert frame is not None and frame.exec.WhichOneof("response") == "exit"
        operation.close()
        stale.task.cancel()
        fresh.up.put_nowait(None)
        await asyncio.gather(stale.task, fresh.task, return_exceptions=True)

    asyncio.run(scenario())


def test_an_operation_gives_up_when_the_runner_does_not_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ops_module, "BIND_TIMEOUT_SECONDS", 0.3)

    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        operations = Operations(registry)
        link, connection = connect(registry)
        handler = Handler(link)
        operation = await operations.open("r1", link, _open_exec())
        await handler.opened()
        registry.disconnect("r1", connection)
        started = asyncio.get_running_loop().time()
        with pytest.raises(ApiError) as caught:
            await operation.receive()
        assert caught.value.reason == "CWSANDBOX_RUNNER_UNAVAILABLE"
        assert asyncio.get_running_loop().time() - started < 1.0  # within the bind budget
        operation.close()
        handler.task.cancel()
        await asyncio.gather(handler.task, return_exceptions=True)

    asyncio.run(scenario())


def test_an_operation_that_was_answered_is_not_bound_again() -> None:
    """Output already reached the client: running it again would repeat it."""

    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        operations = Operations(registry)
        link, connection = connect(registry)
        handler = Handler(link)
        operation = await operations.open("r1", link, _open_exec())
        await handler.opened()
        output = streaming_pb2.ExecStreamOutput(data=b"hi")
        handler.up.put_nowait(
            runner_pb2.OperationUp(exec=streaming_pb2.ExecStreamResponse(output=output))
        )
        assert await operation.receive() is not None
        registry.disconnect("r1", connection)
        connect(registry)  # back at once: still not replayed
        with pytest.raises(ApiError) as caught:
            async with asyncio.timeout(2):
                await operation.receive()
        assert caught.value.reason == "CWSANDBOX_RUNNER_UNAVAILABLE"
        operation.close()
        handler.task.cancel()
        await asyncio.gather(handler.task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_link_holds_at_most_its_idle_limit_and_closing_ends_them() -> None:
    async def scenario() -> None:
        link = RunnerLink("r1", idle_limit=2)
        first, second = link.offer(), link.offer()
        assert first is not None and second is not None
        assert link.offer() is None  # RESOURCE_EXHAUSTED for the runner
        link.close()
        assert first.bound.result() is None and second.bound.result() is None
        assert link.offer() is None
        assert await link.take(0.1) is None

    asyncio.run(scenario())


def test_recent_ids_remember_a_bounded_window() -> None:
    recent = RecentIds(3)
    assert [recent.seen(i) for i in ("a", "b", "c")] == [False, False, False]
    assert recent.seen("a") is True  # a resend of a recent one
    assert recent.seen("d") is False  # evicts the oldest ("b"; "a" was refreshed)
    assert len(recent) == 3
    assert recent.seen("b") is False
