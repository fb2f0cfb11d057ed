"""A start its runner failed for its own reasons moves to another runner (start_moves.py).

Real SQLite store, registry, records, lifecycle and reconcilers, wired as the control plane
wires them; the runners are played by the test through their links' outboxes and
``RunnerLink.resolve``, exactly what ``RunnerService`` connects a real runner's stream to.
The real processes' version is ``tests/integration/test_runner_exhaustion.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandboxd.config import parse_config
from sandboxd.controlplane import caller, lifecycle
from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.lifecycle import Lifecycle, want_deleted
from sandboxd.controlplane.metrics import PlatformCollector
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.sandbox_model import Observed, SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.start_moves import MAX_MOVES, StartMoves
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.identity.model import ADMIN_ORG, Role
from sandboxd.store import Store
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

CONFIG = """
profiles:
  - display_name: default
    spec:
      resource_ceilings: {cpu: "4", memory: 8Gi}
      network:
        egress: {default: none, modes: {none: {type: none}}}
  - display_name: other
    spec:
      resource_ceilings: {cpu: "4", memory: 8Gi}
      network:
        egress: {default: none, modes: {none: {type: none}}}
runners:
  - runner_id: c-other
    bindings: [{profile: other, is_default: true}]
default_bindings:
  - {profile: default, is_default: true}
"""
NO_ROOM = runner_pb2.Failure(
    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    reason="CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED",
    message="this runner has no room for the sandbox: the runner's disk is full",
)
NO_NETWORK = runner_pb2.Failure(
    code=grpc.StatusCode.UNAVAILABLE.value[0],
    reason="CWSANDBOX_BACKEND_UNAVAILABLE",
    message="the host could not make the sandbox's network: iptables-restore failed",
)
CRASHED = runner_pb2.Failure(
    code=grpc.StatusCode.INTERNAL.value[0], reason="", message="the backend crashed"
)
NO_COMMAND = runner_pb2.Failure(
    code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
    reason="CWSANDBOX_COMMAND_NOT_FOUND",
    message="no such command: nope",
)


class Rig:
    """The control plane's sandbox parts with runners a-first, b-second (profile default)
    and c-other (profile other only), each with 4 CPUs and 8 GiB."""

    def __init__(self, tmp: Path) -> None:
        self.store = Store.sqlite(tmp / "cp.db")
        config = parse_config(CONFIG, "test.yaml")
        self.registry = RunnerRegistry(config)
        self.records = SandboxRecords(self.store.sandboxes, self.registry)
        self.moves = StartMoves(self.records, self.registry)
        self.reconcilers = Reconcilers(self.records, self.registry, move_start=self.moves.move)
        self.events = EventLog(self.store.events, self.records)
        kick = self.records.on_change

        def on_change(record: SandboxRecord) -> None:  # as ControlPlane chains them
            self.moves.observe_record(record)
            self.events.observe_record(record)
            kick(record)

        self.records.on_change = on_change
        self.lifecycle = Lifecycle(
            self.registry, self.records, Quotas(config.quotas), self.reconcilers, moves=self.moves
        )
        self.links = {name: self._connect(name) for name in ("a-first", "b-second", "c-other")}

    def _connect(self, runner_id: str) -> RunnerLink:
        register = runner_pb2.Register(
            runner_id=runner_id,
            capabilities=runner_pb2.Capabilities(
                cpu_millicores=4000, memory_bytes=8 << 30, images=["python:3.11"]
            ),
        )
        state, _ = self.registry.register(register)
        assert state.link is not None
        return state.link

    async def start(self, **fields: Any) -> SandboxRecord:
        caller.bind(caller.Caller(key_id="k1", organization=ADMIN_ORG, role=Role.ADMIN))
        fields.setdefault("command", "sleep")
        return await self.lifecycle.start(parse_start_request(g.StartSandboxRequest(**fields)))

    async def next_start(self, runner_id: str) -> runner_pb2.Command:
        """The next start sent to ``runner_id`` (snapshot requests get an empty snapshot)."""
        link = self.links[runner_id]
        async with asyncio.timeout(5):
            while True:
                message = await link.outbox.get()
                assert message is not None, "the link closed"
                command = message.command
                if command.WhichOneof("action") == "start":
                    return command
                if command.WhichOneof("action") == "snapshot":
                    self.answer(runner_id, command, snapshot=runner_pb2.SandboxList())

    async def no_start(self, runner_id: str) -> None:
        """Nothing but snapshot requests reaches ``runner_id`` for a while."""
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.next_start(runner_id), 0.3)

    def answer(self, runner_id: str, command: runner_pb2.Command, **result: Any) -> None:
        reply = runner_pb2.CommandResult(request_id=command.request_id, **result)
        self.links[runner_id].resolve(reply)

    def fail(self, runner_id: str, command: runner_pb2.Command, failure: Any) -> None:
        self.answer(runner_id, command, failure=failure)

    def run(self, runner_id: str, command: runner_pb2.Command) -> None:
        self.answer(runner_id, command, started=runner_pb2.SandboxStarted())

    async def settled(self, sandbox_id: str) -> SandboxRecord:
        got = await self.records.wait_for(
            sandbox_id, lambda r: r is not None and r.observed is not Observed.NONE, 5
        )
        assert got is not None
        return got

    async def trail(self, sandbox_id: str) -> list[tuple[str, dict[str, Any]]]:
        await self.events.flush()
        page = await self.events.page(sandbox_id, 0, 100)
        return [(e.kind, e.data) for e in page]

    def moves_counted(self) -> float:
        """``sandboxd_start_moves_total`` as Prometheus would scrape it."""
        collector = PlatformCollector(
            self.registry, self.records, Operations(self.registry), self.reconcilers, self.moves
        )
        [family] = [m for m in collector.collect() if m.name == "sandboxd_start_moves"]
        [sample] = [s for s in family.samples if s.name == "sandboxd_start_moves_total"]
        return sample.value

    def reserved(self, runner_id: str) -> int:
        state = self.registry.get(runner_id)
        assert state is not None
        return 4000 - state.free_cpu_millicores

    async def close(self) -> None:
        self.records.on_change = lambda _record: None  # a late write must not kick anything
        await self.reconcilers.close()
        self.records.close()
        self.store.close()


async def until(check: Callable[[], bool]) -> None:
    """Return once ``check()`` holds; fail after 5 s."""
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


def scenario(test: Callable[[Rig], Any]) -> Callable[[Path], None]:
    def run(tmp_path: Path) -> None:
        async def go() -> None:
            rig = Rig(tmp_path)
            try:
                await test(rig)
            finally:
                await rig.close()

        asyncio.run(go())

    run.__doc__ = test.__doc__
    return run


async def _a_full_runner_hands_its_start_to_another(rig: Rig) -> None:
    """Runner a-first's disk filled up since its heartbeat: the start goes to b-second, the
    sandbox keeps its id and spec and runs there; a-first gives back what it reserved."""
    placed = await rig.start(mounted_files=[g.MountedFile(mount_path="/etc/x", file_content=b"x")])
    assert placed.runner_id == "a-first"  # the least loaded (all are empty: by id)
    first = await rig.next_start("a-first")
    rig.fail("a-first", first, NO_ROOM)
    second = await rig.next_start("b-second")
    assert second.start.spec.sandbox_id == placed.sandbox_id
    assert second.start.spec.mounted_files == first.start.spec.mounted_files  # not held, kept
    assert second.start.spec.command == ["sleep"]
    assert rig.reserved("a-first") == 0
    assert rig.reserved("b-second") == placed.reserved_cpu_millicores > 0
    rig.run("b-second", second)
    got = await rig.settled(placed.sandbox_id)
    assert (got.runner_id, got.observed) == ("b-second", Observed.RUNNING)
    assert rig.store.sandboxes.get(placed.sandbox_id).runner_id == "b-second"  # type: ignore[union-attr]
    failures = rig.registry.get("a-first").starts.failures  # type: ignore[union-attr]
    assert failures == 1  # still held against a-first
    assert rig.moves_counted() == 1  # sandboxd_start_moves_total
    await until(lambda: len(rig.moves) == 0)  # its request is let go once RUNNING is stored
    trail = await rig.trail(placed.sandbox_id)
    assert [kind for kind, _ in trail] == ["placed", "moved", "running"]
    assert trail[1][1] == {"runner_id": "b-second", "from_runner_id": "a-first"}


test_a_full_runner_hands_its_start_to_another = scenario(_a_full_runner_hands_its_start_to_another)


async def _a_broken_network_moves_too_but_at_most_twice(rig: Rig) -> None:
    """UNAVAILABLE (the host's network) moves the start; after it failed on every runner
    with its profile (two here: c-other has another profile), it ends FAILED with the last
    runner's reason, and nothing stays reserved."""
    placed = await rig.start()
    rig.fail("a-first", await rig.next_start("a-first"), NO_NETWORK)
    rig.fail("b-second", await rig.next_start("b-second"), NO_NETWORK)
    got = await rig.settled(placed.sandbox_id)
    assert got.observed is Observed.FAILED
    assert got.runner_id == "b-second"
    assert got.reason == NO_NETWORK.message
    await rig.no_start("c-other")
    assert rig.reserved("a-first") == rig.reserved("b-second") == 0
    assert rig.moves_counted() == 1
    assert len(rig.moves) == 0


test_a_broken_network_moves_too_but_at_most_twice = scenario(
    _a_broken_network_moves_too_but_at_most_twice
)


async def _no_more_than_max_moves(rig: Rig) -> None:
    """With three runners of the profile, the third failure is final: MAX_MOVES = 2."""
    assert MAX_MOVES == 2
    rig.registry.register(  # a third runner with the default profile
        runner_pb2.Register(
            runner_id="d-fourth",
            capabilities=runner_pb2.Capabilities(
                cpu_millicores=4000, memory_bytes=8 << 30, images=["python:3.11"]
            ),
        )
    )
    state = rig.registry.get("d-fourth")
    assert state is not None and state.link is not None
    rig.links["d-fourth"] = state.link
    placed = await rig.start()
    for runner_id in ("a-first", "b-second", "d-fourth"):
        rig.fail(runner_id, await rig.next_start(runner_id), NO_ROOM)
    got = await rig.settled(placed.sandbox_id)
    assert (got.observed, got.runner_id) == (Observed.FAILED, "d-fourth")


test_no_more_than_max_moves = scenario(_no_more_than_max_moves)


@pytest.mark.parametrize("failure", [CRASHED, NO_COMMAND], ids=["internal", "request"])
def test_other_failures_are_not_moved(tmp_path: Path, failure: runner_pb2.Failure) -> None:
    """A crash (INTERNAL) may be the request's doing, and a command that does not exist is:
    neither is carried to another runner."""

    async def go(rig: Rig) -> None:
        placed = await rig.start()
        rig.fail("a-first", await rig.next_start("a-first"), failure)
        got = await rig.settled(placed.sandbox_id)
        assert (got.observed, got.runner_id, got.reason) == (
            Observed.FAILED,
            "a-first",
            failure.message,
        )
        await rig.no_start("b-second")

    scenario(go)(tmp_path)


async def _a_pinned_start_stays_pinned(rig: Rig) -> None:
    """runner_ids=[a-first]: no other runner may take it, so it fails there."""
    placed = await rig.start(runner_ids=["a-first"])
    rig.fail("a-first", await rig.next_start("a-first"), NO_ROOM)
    got = await rig.settled(placed.sandbox_id)
    assert (got.observed, got.runner_id) == (Observed.FAILED, "a-first")
    await rig.no_start("b-second")


test_a_pinned_start_stays_pinned = scenario(_a_pinned_start_stays_pinned)


async def _a_start_pinned_to_two_moves_between_them(rig: Rig) -> None:
    """runner_ids=[b-second, a-first]: the start moves, but only among its pins."""
    placed = await rig.start(runner_ids=["b-second", "a-first"])
    first = placed.runner_id
    other = "b-second" if first == "a-first" else "a-first"
    rig.fail(first, await rig.next_start(first), NO_ROOM)
    rig.run(other, await rig.next_start(other))
    got = await rig.settled(placed.sandbox_id)
    assert (got.observed, got.runner_id) == (Observed.RUNNING, other)


test_a_start_pinned_to_two_moves_between_them = scenario(_a_start_pinned_to_two_moves_between_them)


async def _a_start_deleted_meanwhile_is_not_moved(rig: Rig) -> None:
    """The client deleted the sandbox while its start was on its way: the failure ends it,
    no other runner is asked to start a sandbox nobody wants."""
    placed = await rig.start()
    command = await rig.next_start("a-first")
    await rig.records.update(placed.sandbox_id, want_deleted)
    rig.fail("a-first", command, NO_ROOM)
    await rig.no_start("b-second")
    assert len(rig.moves) == 0


test_a_start_deleted_meanwhile_is_not_moved = scenario(_a_start_deleted_meanwhile_is_not_moved)


def test_a_request_known_to_no_one_fails_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose request is neither held nor stored (its row written by an earlier
    version, before this control plane restarted): FAILED, as before."""
    monkeypatch.setattr(lifecycle, "encode_request", lambda _request: None)  # an older row

    async def go(rig: Rig) -> None:
        placed = await rig.start()
        rig.moves.release(placed.sandbox_id)  # what a restart forgets
        rig.fail("a-first", await rig.next_start("a-first"), NO_ROOM)
        got = await rig.settled(placed.sandbox_id)
        assert (got.observed, got.runner_id) == (Observed.FAILED, "a-first")
        await rig.no_start("b-second")

    scenario(go)(tmp_path)


def test_a_start_placed_before_a_restart_still_moves(tmp_path: Path) -> None:
    """The control plane is gone while a start is on its way to a-first, and its successor
    on the same database holds no request in memory; a-first then fails the start for want
    of room. It moves to b-second all the same, with the very spec the first one built (the
    request is stored with the record, held_requests.py), and the stored request goes once
    the sandbox runs. Before, it ended FAILED."""

    async def go() -> None:
        before = Rig(tmp_path)
        try:
            placed = await before.start(
                environment_variables={"GREETING": "hi"},
                tags=["t1"],
                mounted_files=[g.MountedFile(mount_path="/etc/x", file_content=b"x")],
            )
            first = await before.next_start("a-first")  # sent, never answered
        finally:
            await before.close()
        rig = Rig(tmp_path)  # the successor, on the same database
        try:
            assert await rig.records.load() == 1
            assert len(rig.moves) == 0
            rig.reconcilers.kick_all()
            again = await rig.next_start("a-first")
            assert again.start.spec == first.start.spec
            rig.fail("a-first", again, NO_ROOM)
            moved = await rig.next_start("b-second")
            assert moved.start.spec == first.start.spec
            rig.run("b-second", moved)
            got = await rig.settled(placed.sandbox_id)
            assert (got.runner_id, got.observed) == ("b-second", Observed.RUNNING)

            def stored_settled() -> bool:  # RUNNING is shown first, stored right after
                stored = rig.store.sandboxes.get(placed.sandbox_id)
                assert stored is not None and stored.runner_id == "b-second"
                return stored.start_request is None

            await until(stored_settled)
            assert rig.moves_counted() == 1
        finally:
            await rig.close()

    asyncio.run(go())
