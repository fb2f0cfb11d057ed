"""Operations sent on a runner connection that dies are sent again on the next one.

The scenario is the one after a partition heals: the control plane's sends on the old
connection are stuck until keepalive closes it, and the runner redials a second later. Real
registry, links, sessions and lifecycle; the runner is played by the test (what it reads
from the link's outbox, what it answers).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxd._proto import runner_pb2
from sandboxd.config import load_config
from sandboxd.controlplane import exec_bridge
from sandboxd.controlplane.exec_bridge import StreamSessions
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.sandbox_model import Observed, SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.streaming import open_on_runner
from sandboxd.errors import ApiError
from sandboxd.runner.recent_ids import RecentIds
from sandboxd.store import Store


def connect(registry: RunnerRegistry, runner_id: str = "r1") -> tuple[RunnerLink, int]:
    register = runner_pb2.Register(
        runner_id=runner_id,
        capabilities=runner_pb2.Capabilities(cpu_millicores=4000, memory_bytes=8 << 30),
    )
    state, connection = registry.register(register)
    assert state.link is not None
    return state.link, connection


async def next_command(link: RunnerLink) -> runner_pb2.Command:
    async with asyncio.timeout(5):
        message = await link.outbox.get()
    assert message is not None, "the link closed"
    return message.command


def test_an_open_lost_with_its_connection_is_sent_on_the_next_one() -> None:
    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        sessions = StreamSessions()
        old, connection = connect(registry)
        session = sessions.open("r1")
        command = runner_pb2.Command(
            exec=runner_pb2.OpenExec(stream_id=session.stream_id, sandbox_id="sb-1")
        )
        opening = asyncio.ensure_future(open_on_runner(registry, "r1", old, session, command))
        first = await next_command(old)  # queued on the old connection, never delivered
        assert first.exec.stream_id == session.stream_id
        registry.disconnect("r1", connection)  # keepalive closes it
        await asyncio.sleep(0.05)
        assert not opening.done()  # waiting for the runner's next connection, not failing
        new, _ = connect(registry)  # the runner redials
        again = await next_command(new)
        assert again.exec.stream_id == session.stream_id  # the same stream: the runner dedupes
        assert sessions.attach(session.stream_id, "r1") is session
        async with asyncio.timeout(2):
            assert await opening is True

    asyncio.run(scenario())


def test_an_open_gives_up_when_the_runner_does_not_return(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_bridge, "ATTACH_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr("sandboxd.controlplane.streaming.ATTACH_TIMEOUT_SECONDS", 0.3)

    async def scenario() -> None:
        registry = RunnerRegistry(load_config(None))
        sessions = StreamSessions()
        link, connection = connect(registry)
        session = sessions.open("r1")
        command = runner_pb2.Command(exec=runner_pb2.OpenExec(stream_id=session.stream_id))
        opening = asyncio.ensure_future(open_on_runner(registry, "r1", link, session, command))
        await next_command(link)
        registry.disconnect("r1", connection)
        started = asyncio.get_running_loop().time()
        assert await opening is False
        assert asyncio.get_running_loop().time() - started < 1.0  # within the attach budget

    asyncio.run(scenario())


def test_a_file_read_lost_with_its_connection_is_read_on_the_next_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        registry = RunnerRegistry(load_config(None))
        records = SandboxRecords(store.sandboxes, registry)
        lifecycle = Lifecycle(
            registry, records, Quotas(load_config(None).quotas), Reconcilers(records, registry)
        )
        old, connection = connect(registry)
        record = SandboxRecord(
            "sb-1", "r1", spec=b"x", observed=Observed.RUNNING, observed_generation=1
        )
        await records.add(record)
        reading = asyncio.ensure_future(lifecycle.read_file(record, "/etc/motd"))
        first = await next_command(old)
        while first.WhichOneof("action") != "read_file":  # (a reconciler may ask too)
            first = await next_command(old)
        registry.disconnect("r1", connection)  # the answer will never come on it
        new, _ = connect(registry)
        again = await next_command(new)
        while again.WhichOneof("action") != "read_file":
            again = await next_command(new)
        assert again.read_file.path == "/etc/motd"
        new.resolve(
            runner_pb2.CommandResult(
                request_id=again.request_id, file=runner_pb2.FileContents(contents=b"hello")
            )
        )
        async with asyncio.timeout(2):
            assert await reading == b"hello"
        await lifecycle.reconcilers.close()
        records.close()
        store.close()

    asyncio.run(scenario())


def test_a_file_read_fails_at_once_when_the_runner_answers_an_error(tmp_path: Path) -> None:
    """Only a lost connection is retried; a runner's own refusal is the answer."""

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        registry = RunnerRegistry(load_config(None))
        records = SandboxRecords(store.sandboxes, registry)
        lifecycle = Lifecycle(
            registry, records, Quotas(load_config(None).quotas), Reconcilers(records, registry)
        )
        link, _ = connect(registry)
        record = SandboxRecord(
            "sb-1", "r1", spec=b"x", observed=Observed.RUNNING, observed_generation=1
        )
        await records.add(record)
        reading = asyncio.ensure_future(lifecycle.read_file(record, "/nope"))
        command = await next_command(link)
        while command.WhichOneof("action") != "read_file":
            command = await next_command(link)
        link.resolve(
            runner_pb2.CommandResult(
                request_id=command.request_id,
                failure=runner_pb2.Failure(code=5, reason="CWSANDBOX_FILE_NOT_FOUND", message="no"),
            )
        )
        with pytest.raises(ApiError) as caught:
            await reading
        assert caught.value.reason == "CWSANDBOX_FILE_NOT_FOUND"
        await lifecycle.reconcilers.close()
        records.close()
        store.close()

    asyncio.run(scenario())


def test_recent_ids_remember_a_bounded_window() -> None:
    recent = RecentIds(3)
    assert [recent.seen(i) for i in ("a", "b", "c")] == [False, False, False]
    assert recent.seen("a") is True  # a resend of a recent one
    assert recent.seen("d") is False  # evicts the oldest ("b"; "a" was refreshed)
    assert len(recent) == 3
    assert recent.seen("b") is False
