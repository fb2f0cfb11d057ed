"""The reconciler against a real database and registry, with the runner played by the test.

The runner side is the runner link's outbox (commands the control plane sends) and
``RunnerLink.resolve`` (its answers): exactly what ``RunnerService`` connects to a real
runner's stream. Everything else — records, SQLite store, registry, reconcilers — is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy.exc import OperationalError

from sandboxd.config import load_config
from sandboxd.controlplane.lifecycle import want_deleted, want_stopped
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.sandbox_model import (
    Desired,
    Observed,
    SandboxRecord,
    now,
    start_deadline,
)
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.errors import ApiError
from sandboxd.store import Store
from sandboxd_protocol.sandboxd_v1 import runner_pb2

SPEC = runner_pb2.SandboxSpec(sandbox_id="sb-1", image="python:3.11", command=["sleep", "1"])


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.store = Store.sqlite(tmp / "cp.db")
        self.registry = RunnerRegistry(load_config(None))
        self.records = SandboxRecords(self.store.sandboxes, self.registry)
        self.reconcilers = Reconcilers(self.records, self.registry)
        self.connections: dict[str, int] = {}

    def connect(self, runner_id: str = "r1") -> RunnerLink:
        register = runner_pb2.Register(
            runner_id=runner_id,
            capabilities=runner_pb2.Capabilities(cpu_millicores=4000, memory_bytes=8 << 30),
        )
        state, connection = self.registry.register(register)
        self.connections[runner_id] = connection
        assert state.link is not None
        return state.link

    def disconnect(self, runner_id: str = "r1") -> None:
        self.registry.disconnect(runner_id, self.connections.pop(runner_id))
        self.reconcilers.on_disconnect(runner_id)

    async def command(
        self, link: RunnerLink, snapshot: list[runner_pb2.SandboxEvent] | None = None
    ) -> runner_pb2.Command:
        """The next command that is not a snapshot request (those get ``snapshot``)."""
        async with asyncio.timeout(5):
            while True:
                message = await link.outbox.get()
                assert message is not None, "the link closed"
                command = message.command
                if command.WhichOneof("action") != "snapshot":
                    return command
                self.answer(link, command, snapshot=runner_pb2.SandboxList(sandboxes=snapshot))

    async def quiet(
        self, link: RunnerLink, snapshot: list[runner_pb2.SandboxEvent] | None = None
    ) -> None:
        """Nothing but snapshot requests comes down for a while."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                command = await self.command(link, snapshot)
                raise AssertionError(f"unexpected command {command}")

    def answer(self, link: RunnerLink, command: runner_pb2.Command, **result: Any) -> None:
        link.resolve(runner_pb2.CommandResult(request_id=command.request_id, **result))

    async def settle(self, sandbox_id: str, done: Any) -> SandboxRecord | None:
        return await self.records.wait_for(sandbox_id, done, 5)

    async def close(self) -> None:
        await self.reconcilers.close()
        self.records.close()
        self.store.close()


@asynccontextmanager
async def rig_for(tmp: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp)
    try:
        yield rig
    finally:
        await rig.close()


def record(sandbox_id: str = "sb-1", **fields: Any) -> SandboxRecord:
    created = now()
    spec = runner_pb2.SandboxSpec()
    spec.CopyFrom(SPEC)
    spec.sandbox_id = sandbox_id
    base = SandboxRecord(
        sandbox_id,
        "r1",
        spec=spec.SerializeToString(),
        created_at=created,
        start_deadline=start_deadline(created),
        reserved_cpu_millicores=500,
    )
    return replace(base, **fields)


def event(phase: int, generation: int = 1, **fields: Any) -> runner_pb2.SandboxEvent:
    return runner_pb2.SandboxEvent(sandbox_id="sb-1", phase=phase, generation=generation, **fields)


RUNNING = runner_pb2.SANDBOX_PHASE_RUNNING
COMPLETED = runner_pb2.SANDBOX_PHASE_COMPLETED


async def in_database(
    store: Store, sandbox_id: str, check: Callable[[SandboxRecord], bool]
) -> SandboxRecord:
    """The stored record once ``check`` holds for it (a RUNNING report is stored after it is
    shown: ``SandboxRecords.observe_running``); fails after 5 s."""
    async with asyncio.timeout(5):
        while True:
            stored = store.sandboxes.get(sandbox_id)
            if stored is not None and check(stored):
                return stored
            await asyncio.sleep(0.01)


def test_start_is_sent_once_and_its_answer_observed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            link = rig.connect()
            await rig.records.add(record())
            assert rig.registry.get("r1").reservations["sb-1"].cpu_millicores == 500  # type: ignore[union-attr]
            command = await rig.command(link)
            assert command.start.spec.sandbox_id == "sb-1" and command.start.generation == 1
            rig.reconcilers.kick("r1")  # a pass while the start is in flight sends nothing new
            await rig.quiet(link)
            started = runner_pb2.SandboxStarted(service_address="127.0.0.1:4000")
            rig.answer(link, command, started=started)
            done = await rig.settle("sb-1", lambda r: r.observed is Observed.RUNNING)
            assert done is not None and done.service_address == "127.0.0.1:4000"
            # Shown first (observe_running), stored right after: in the database too.
            stored = await in_database(rig.store, "sb-1", lambda r: r.observed is Observed.RUNNING)
            assert stored.service_address == "127.0.0.1:4000"

    asyncio.run(scenario())


def test_a_start_lost_with_its_connection_is_sent_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record())  # the runner is not connected: nothing to send yet
            link = rig.connect()
            rig.reconcilers.kick("r1")
            first = await rig.command(link)
            assert first.WhichOneof("action") == "start"
            rig.disconnect()  # the answer never comes
            again = await rig.command(rig.connect())
            assert again.start.spec.sandbox_id == "sb-1"

    asyncio.run(scenario())


def test_a_stop_while_the_runner_is_away_happens_when_it_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record(observed=Observed.RUNNING, observed_generation=1))
            stopped = await rig.records.update("sb-1", lambda r: want_stopped(r, 3))
            assert stopped is not None and stopped.generation == 2
            link = rig.connect()
            await rig.reconcilers.on_register(
                "r1", runner_pb2.Register(runner_id="r1", sandboxes=[event(RUNNING)])
            )
            command = await rig.command(link, snapshot=[event(RUNNING)])
            assert (command.stop.sandbox_id, command.stop.generation) == ("sb-1", 2)
            assert command.stop.grace_seconds == 3
            final = event(COMPLETED, 2, exit_code=143, reason="stopped")
            rig.answer(link, command, state=final)
            done = await rig.settle("sb-1", lambda r: r.terminal)
            assert done is not None and (done.exit_code, done.status_reason) == (143, "stopped")
            assert "sb-1" not in rig.registry.get("r1").reservations  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_snapshot_marks_lost_sandboxes_gone_and_restarts_unstarted_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record(observed=Observed.RUNNING, observed_generation=1))
            await rig.records.add(record("sb-2"))
            link = rig.connect()
            # The runner came back without sb-1 (its host rebooted) and never got sb-2's start.
            await rig.reconcilers.on_register("r1", runner_pb2.Register(runner_id="r1"))
            lost = await rig.settle("sb-1", lambda r: r.terminal)
            assert lost is not None and lost.observed is Observed.GONE
            assert lost.status_reason.startswith("lost")
            command = await rig.command(link)
            assert command.start.spec.sandbox_id == "sb-2"  # never started: started (again)

    asyncio.run(scenario())


def test_a_snapshot_never_calls_lost_a_sandbox_reported_after_it_was_asked_for(
    tmp_path: Path,
) -> None:
    """A runner leaves a sandbox still starting out of its snapshot; the sandbox's start then
    ends, and its RUNNING arrives after the snapshot was asked for but before its answer.

    A CI run of ``test_controlplane_kill9_and_restart_loses_nothing`` saw such a sandbox
    marked FAILED ("lost: its runner no longer has it") while it ran fine. A sandbox that
    was running before the snapshot was asked for and is missing from it is still lost, and
    the undecided one is decided by a newer snapshot, asked for a second later.
    """

    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record(observed=Observed.RUNNING, observed_generation=1))
            await rig.records.add(record("sb-2"))
            link = rig.connect()
            await rig.reconcilers.on_register(
                "r1", runner_pb2.Register(runner_id="r1", sandboxes=[event(RUNNING)])
            )
            asked: runner_pb2.Command | None = None
            start: runner_pb2.Command | None = None
            async with asyncio.timeout(5):
                while asked is None or start is None:
                    message = await link.outbox.get()
                    assert message is not None, "the link closed"
                    kind = message.command.WhichOneof("action")
                    if kind == "snapshot":
                        asked = message.command  # held: the runner is still making it
                    elif kind == "start":
                        start = message.command
            assert start.start.spec.sandbox_id == "sb-2"
            # sb-2's start ends after the snapshot left sb-2 (still starting) out ...
            rig.answer(link, start, started=runner_pb2.SandboxStarted())
            running = await rig.settle("sb-2", lambda r: r.observed is Observed.RUNNING)
            assert running is not None
            # ... and the snapshot, made before that, comes back without sb-1 (gone) or sb-2.
            rig.answer(link, asked, snapshot=runner_pb2.SandboxList())
            reconciler = rig.reconcilers.of("r1")
            async with asyncio.timeout(5):  # until the whole answer is applied
                while reconciler.snapshots_asked:
                    await asyncio.sleep(0.01)
            lost = await rig.settle("sb-1", lambda r: r.terminal)
            assert lost is not None and lost.status_reason.startswith("lost")
            kept = rig.records.cached("sb-2")
            assert kept is not None and kept.observed is Observed.RUNNING, kept
            assert not kept.terminal
            # A newer snapshot decides: asked for about a second later. Had the runner really
            # lost sb-2, this one (made after its report) says so, and it is lost.
            async with asyncio.timeout(5):
                while True:
                    message = await link.outbox.get()
                    assert message is not None, "the link closed"
                    if message.command.WhichOneof("action") == "snapshot":
                        break
            rig.answer(link, message.command, snapshot=runner_pb2.SandboxList())
            gone = await rig.settle("sb-2", lambda r: r.terminal)
            assert gone is not None and gone.status_reason.startswith("lost")

    asyncio.run(scenario())


def test_unknown_sandboxes_are_orphans_and_deleted_ones_are_destroyed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            gone = record("sb-deleted", observed=Observed.COMPLETED)
            await rig.records.add(gone)
            await rig.records.remove(gone)  # deleted here: a tombstone
            link = rig.connect()
            reported = [
                runner_pb2.SandboxEvent(sandbox_id="sb-deleted", phase=RUNNING),
                runner_pb2.SandboxEvent(sandbox_id="sb-foreign", phase=RUNNING),
            ]
            await rig.reconcilers.on_register(
                "r1", runner_pb2.Register(runner_id="r1", sandboxes=reported, cluster_id="other")
            )
            command = await rig.command(link, snapshot=reported)
            assert command.delete.sandbox_id == "sb-deleted"  # positive evidence: destroy it
            orphans = await rig.records.orphans()
            assert [(o.sandbox_id, o.phase, o.runner_cluster_id) for o in orphans] == [
                ("sb-foreign", "running", "other")
            ]
            # The runner destroyed it; nothing is ever sent for the orphan: it keeps running.
            await rig.quiet(link, reported[1:])

    asyncio.run(scenario())


def test_a_start_past_its_deadline_converges_without_its_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            created = now() - timedelta(minutes=5)
            late = record(created_at=created, start_deadline=created + timedelta(minutes=2))
            await rig.records.add(late)
            rig.reconcilers.kick("r1")
            failed = await rig.settle("sb-1", lambda r: r.terminal)
            assert failed is not None and failed.status_reason.startswith("did not start within")
            assert failed.desired is Desired.STOPPED
            # The runner returns and says the sandbox runs after all: it is stopped, not leaked.
            link = rig.connect()
            await rig.reconcilers.on_register(
                "r1", runner_pb2.Register(runner_id="r1", sandboxes=[event(RUNNING)])
            )
            command = await rig.command(link, snapshot=[event(RUNNING)])
            assert command.stop.sandbox_id == "sb-1"

    asyncio.run(scenario())


def test_delete_removes_the_row_and_leaves_a_tombstone(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record(observed=Observed.RUNNING, observed_generation=1))
            link = rig.connect()
            await rig.records.update("sb-1", want_deleted)
            command = await rig.command(link)
            assert command.delete.sandbox_id == "sb-1" and command.delete.generation == 2
            rig.answer(link, command, done=runner_pb2.Done())
            assert await rig.settle("sb-1", lambda r: r is None) is None
            assert rig.store.sandboxes.tombstoned(["sb-1"]) == {"sb-1"}
            assert "sb-1" not in rig.registry.get("r1").reservations  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_failed_write_changes_nothing_and_the_report_is_picked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses one write (simulated here by a failing ``save``; the fault tests
    use real database failures): the caller gets UNAVAILABLE, memory and database agree, and
    the next snapshot applies the report."""

    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            await rig.records.add(record())
            real_save = rig.store.sandboxes.save
            failures = iter([True])

            def flaky_save(changed: SandboxRecord) -> SandboxRecord:
                if next(failures, False):
                    raise OperationalError("UPDATE", {}, Exception("disk I/O error"))
                return real_save(changed)

            monkeypatch.setattr(rig.store.sandboxes, "save", flaky_save)
            with pytest.raises(ApiError) as caught:
                await rig.records.update("sb-1", lambda r: replace(r, reason="x"))
            assert caught.value.reason == "CWSANDBOX_STORE_UNAVAILABLE"
            assert rig.records.cached("sb-1").reason == ""  # type: ignore[union-attr]
            assert rig.store.sandboxes.get("sb-1").reason == ""  # type: ignore[union-attr]
            link = rig.connect()
            rig.reconcilers.kick("r1")
            start = await rig.command(link)
            rig.answer(link, start, started=runner_pb2.SandboxStarted())
            done = await rig.settle("sb-1", lambda r: r.observed is Observed.RUNNING)
            assert done is not None
            await in_database(rig.store, "sb-1", lambda r: r.observed is Observed.RUNNING)

    asyncio.run(scenario())


def test_a_start_answered_without_progress_is_retried_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that answers at once without progress is not flooded with the same command."""
    monkeypatch.setattr("sandboxd.controlplane.reconciler.RETRY_SECONDS", 0.6)

    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            link = rig.connect()
            await rig.records.add(record())
            exists = runner_pb2.Failure(code=grpc.StatusCode.ALREADY_EXISTS.value[0], message="x")
            first = await rig.command(link)
            answered = asyncio.get_running_loop().time()
            rig.answer(link, first, failure=exists)
            await rig.quiet(link)  # not at once (the runner is asked for a snapshot meanwhile)
            again = await rig.command(link)
            assert again.start.spec.sandbox_id == "sb-1"
            assert asyncio.get_running_loop().time() - answered >= 0.55

    asyncio.run(scenario())


def test_an_adopted_orphan_is_never_started_by_the_control_plane(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig_for(tmp_path) as rig:
            link = rig.connect()
            await rig.records.add(record(spec=None, start_deadline=None))
            rig.reconcilers.kick("r1")
            await rig.quiet(link)  # only its runner knows how; it reports when it runs
            await rig.reconcilers.on_event("r1", event(RUNNING))
            running = await rig.settle("sb-1", lambda r: r.observed is Observed.RUNNING)
            assert running is not None
            await rig.records.update("sb-1", lambda r: want_stopped(r, 1))
            command = await rig.command(link)
            assert command.stop.sandbox_id == "sb-1"  # but it is stopped like any other

    asyncio.run(scenario())
