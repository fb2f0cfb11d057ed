"""The runner's warm pools (``sandboxd.runner.warm_pool``) over a stand-in backend.

What the runner decides, without real sandboxes (``tests/backends/test_local_warm.py`` and
``tests/e2e/test_warm_pool_e2e.py`` have those): pools fill to their size in the
background; a Start that matches its profile's pool in everything but what is applied at
start claims a slot, anything else goes cold; a slot that fails its claim is cleaned up
and the Start goes cold; pools shrink, grow and go away with the control plane's wish;
failing builds back off and say why; shutdown discards every slot; pool sandboxes are not
the runner's sandboxes (no snapshot entry, no reservation).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.errors import SandboxStartError
from sandboxd.config.loader import ConfigError, parse_config, resolve_binding
from sandboxd.controlplane.warm_pools import warm_pool_specs
from sandboxd.runner import warm_pool
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend, StandinSandbox
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start

_slots = itertools.count()


class WarmStandin(StandinBackend):
    """The stand-in with warm slots: ``prepare`` makes one, ``claim`` renames and starts it."""

    supports_warm_pools = True

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[str, SandboxSpec] = {}
        self.discarded: list[str] = []
        self.fail_prepare = ""
        self.fail_claim = False
        self.claimed: list[str] = []
        self.discard_seconds = 0.0  # how long tearing a slot down takes

    async def prepare(self, spec: SandboxSpec) -> str:
        await asyncio.sleep(0)
        if self.fail_prepare:
            raise SandboxStartError(self.fail_prepare)
        slot = f"_slot-{next(_slots)}"
        self.slots[slot] = spec
        return slot

    async def claim(self, slot: str, spec: SandboxSpec) -> None:
        self.slots.pop(slot)
        self.world[spec.sandbox_id] = StandinSandbox(spec)
        if self.fail_claim:
            raise SandboxStartError("the slot died")
        self.claimed.append(spec.sandbox_id)
        await self.start(spec.sandbox_id)

    async def discard(self, slot: str) -> None:
        self.slots.pop(slot, None)  # as the local backend: the slot is gone from its list
        if self.discard_seconds:
            await asyncio.sleep(self.discard_seconds)
        self.discarded.append(slot)  # ... and only now torn down (its claims given back)


def pool_of(profile: str = "pooled", size: int = 2, **fields: object) -> runner_pb2.WarmPool:
    template = spec("", profile_name=profile, **fields)  # type: ignore[arg-type]
    return runner_pb2.WarmPool(profile_name=profile, size=size, spec=template)


async def settle(rig: Rig, ready: int, profile: str = "pooled") -> runner_pb2.WarmPoolState:
    for _ in range(500):
        states = {s.profile_name: s for s in rig.supervisor.warm_pool_states()}
        if profile in states and states[profile].ready == ready:
            return states[profile]
        await asyncio.sleep(0.005)
    raise AssertionError(rig.supervisor.warm_pool_states())


def test_a_pool_fills_and_a_matching_start_claims(tmp_path: Path) -> None:
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of()])
        state = await settle(rig, 2)
        assert (state.size, state.ready, state.claims, state.error) == (2, 2, 0, "")
        assert rig.supervisor.snapshot() == []  # pool sandboxes are nobody's
        assert rig.ledger.reservation("anything") is None
        claimant = spec(
            "sb-1",
            profile_name="pooled",
            command=["python", "app.py"],
            environment={"A": "1"},
            working_dir="/srv",
            max_lifetime_seconds=60,
        )
        result = await rig.run("1", **start(claimant))
        assert result.WhichOneof("result") == "started", result
        assert backend.claimed == ["sb-1"]
        got = backend.world["sb-1"].spec
        assert got.command == ("python", "app.py") and dict(got.env) == {"A": "1"}
        assert got.workdir == "/srv" and got.max_lifetime_seconds
        assert ("create", "sb-1") not in backend.calls
        assert [e.sandbox_id for e in rig.supervisor.snapshot()] == ["sb-1"]
        state = await settle(rig, 2)  # refilled in the background
        assert state.claims == 1

    run_rig(tmp_path, body, backend=backend)


def test_starts_that_do_not_match_go_cold(tmp_path: Path) -> None:
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of()])
        await settle(rig, 2)
        others = [
            spec("sb-mem", profile_name="pooled", memory_bytes=1 << 29),
            spec("sb-files", profile_name="pooled",
                 mounted_files=[runner_pb2.MountedFile(path="/etc/x", content=b"x")]),
            spec("sb-net", profile_name="pooled",
                 network=runner_pb2.NetworkPolicy(egress_type="internet")),
            spec("sb-other-profile", profile_name="other"),
            spec("sb-pids", profile_name="pooled", pids_max=64),
        ]  # fmt: skip
        for i, s in enumerate(others):
            s.reservation.CopyFrom(runner_pb2.Reservation(cpu_millicores=10, memory_bytes=1 << 20))
            result = await rig.run(str(i), **start(s))
            assert result.WhichOneof("result") == "started", result
            assert ("create", s.sandbox_id) in backend.calls
        assert backend.claimed == []
        assert (await settle(rig, 2)).claims == 0

    run_rig(tmp_path, body, backend=backend)


def test_a_failed_claim_cleans_up_and_goes_cold(tmp_path: Path) -> None:
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of()])
        await settle(rig, 2)
        backend.fail_claim = True
        result = await rig.run("1", **start(spec("sb-1", profile_name="pooled")))
        assert result.WhichOneof("result") == "started", result
        assert ("destroy", "sb-1") in backend.calls  # what the claim made is gone
        assert ("create", "sb-1") in backend.calls  # and the Start went cold
        assert backend.world["sb-1"].state == "running"

    run_rig(tmp_path, body, backend=backend)


def test_pools_follow_the_control_plane_and_back_off_failing_builds(tmp_path: Path) -> None:
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of(size=3)])
        await settle(rig, 3)
        rig.supervisor.configure_warm_pools([pool_of(size=1)])  # shrink
        await settle(rig, 1)
        await asyncio.sleep(0.01)
        assert len(backend.discarded) == 2 and len(backend.slots) == 1
        rig.supervisor.configure_warm_pools([pool_of(size=1, memory_bytes=1 << 29)])  # changed
        await settle(rig, 1)
        await asyncio.sleep(0.01)
        assert len(backend.discarded) == 3
        assert all(s.memory_bytes == 1 << 29 for s in backend.slots.values())
        rig.supervisor.configure_warm_pools([])  # gone
        await asyncio.sleep(0.01)
        assert rig.supervisor.warm_pool_states() == [] and backend.slots == {}
        backend.fail_prepare = "no image"
        rig.supervisor.configure_warm_pools([pool_of(size=1)])
        for _ in range(200):
            states = rig.supervisor.warm_pool_states()
            if states[0].error:
                break
            await asyncio.sleep(0.005)
        assert states[0].error == "no image" and states[0].ready == 0
        backend.fail_prepare = ""
        state = await settle(rig, 1)  # after the first backoff (1 s)
        assert state.error == ""

    run_rig(tmp_path, body, backend=backend)


def test_shutdown_discards_every_slot(tmp_path: Path) -> None:
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of(size=2), pool_of("second", size=1)])
        await settle(rig, 2)
        await settle(rig, 1, "second")

    run_rig(tmp_path, body, backend=backend)
    assert backend.slots == {} and len(backend.discarded) == 3


def test_shutdown_lets_discards_under_way_finish(tmp_path: Path) -> None:
    """A slot being discarded at shutdown (its pool shrank or went) is torn down whole.

    Shutdown used to cancel those discards with the filler: the slot had left the backend's
    list, so nobody tore it down, and its user-id range stayed claimed on the host.
    """
    backend = WarmStandin()

    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of(size=2)])
        await settle(rig, 2)
        backend.discard_seconds = 0.2
        rig.supervisor.configure_warm_pools([])  # both slots are being discarded ...
        await asyncio.sleep(0.01)
        assert backend.slots == {} and backend.discarded == []  # ... when shutdown comes

    run_rig(tmp_path, body, backend=backend)
    assert len(backend.discarded) == 2


def test_backends_without_pools_ignore_them(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.supervisor.configure_warm_pools([pool_of()])
        await asyncio.sleep(0.01)
        assert rig.supervisor.warm_pool_states() == []
        result = await rig.run("1", **start(spec("sb-1", profile_name="pooled")))
        assert result.WhichOneof("result") == "started"

    run_rig(tmp_path, body)


def test_match_key_ignores_only_what_is_applied_at_start() -> None:
    base = SandboxSpec("a", "busybox", memory_bytes=1 << 28)
    same = SandboxSpec(
        "b", "busybox", memory_bytes=1 << 28, command=("x",), env={"A": "1"}, workdir="/w",
        max_lifetime_seconds=5, hostname="h",
    )  # fmt: skip
    assert warm_pool.match_key(base) == warm_pool.match_key(same)
    assert warm_pool.match_key(base) != warm_pool.match_key(
        SandboxSpec("a", "busybox", memory_bytes=1 << 29)
    )


# -- the control plane's side: configuration and the template ------------------------------

CONFIG = """
profiles:
  - display_name: pooled
    spec:
      container_image: python:3.11
      resource_defaults: {cpu_request: 50m, memory_request: 64Mi, cpu_limit: "1",
                          memory_limit: 256Mi}
      resource_ceilings: {cpu: "2", memory: 1Gi, disk: 1Gi, pids: 512}
      warm_pool: {size: SIZE}
      max_lifetime_seconds: 3600
      network:
        egress: {default: none, modes: {none: {type: none}}}
default_bindings:
  - {profile: pooled, is_default: true}
  - {profile: pooled, profile_name: bigger, overrides: {warm_pool: {size: 5}}}
"""


def test_warm_pool_sizes_are_checked_with_the_field_named() -> None:
    for size, problem in (
        ("-1", "must be from 0 to 64 sandboxes per runner (got -1)"),
        ("65", "must be from 0 to 64 sandboxes per runner (got 65)"),
        ("two", "must be a whole number from 0 to 64 (got 'two')"),
        ("true", "must be a whole number from 0 to 64 (got True)"),
    ):
        try:
            parse_config(CONFIG.replace("SIZE", size), "platform.yaml")
            raise AssertionError(f"size {size} accepted")
        except ConfigError as exc:
            # The line of the value, for the person editing the file (CONFIG starts with \n).
            assert str(exc) == f"platform.yaml: profiles[0].spec.warm_pool.size (line 9): {problem}"
    try:
        parse_config(
            CONFIG.replace("SIZE", "1").replace("{size: 5}", "{size: 500}"), "platform.yaml"
        )
        raise AssertionError("override of 500 accepted")
    except ConfigError as exc:
        assert "warm_pool.size" in str(exc) and "got 500" in str(exc)


def test_the_template_is_what_a_start_with_nothing_of_its_own_resolves_to() -> None:
    config = parse_config(CONFIG.replace("SIZE", "2"), "platform.yaml")
    profiles = [resolve_binding(config, b) for b in config.default_bindings]
    pools = warm_pool_specs(profiles)
    assert [(p.profile_name, p.size) for p in pools] == [("pooled", 2), ("bigger", 5)]
    template = pools[0].spec
    assert template.image == "python:3.11" and template.profile_name == "pooled"
    assert (template.cpu_millicores, template.memory_bytes) == (1000, 256 << 20)
    assert (template.disk_bytes, template.pids_max) == (1 << 30, 512)
    assert template.network.egress_type == "none" and template.network.egress_mode == "none"
    assert template.reservation.cpu_millicores == 50
    assert template.reservation.memory_bytes == 64 << 20
    assert template.limits.max_memory_bytes == 1 << 30
    # set at claim time, never part of the match
    assert not template.sandbox_id and not template.command and not template.environment
    assert template.max_lifetime_seconds == 0
    assert warm_pool_specs([resolve_binding(config, b) for b in config.default_bindings[:0]]) == []


def test_discovery_shows_the_size_configured_and_what_the_runner_reported() -> None:
    from types import SimpleNamespace

    from sandboxd.controlplane.warm_pools import pool_message

    config = parse_config(CONFIG.replace("SIZE", "2"), "platform.yaml")
    pooled, bigger = [resolve_binding(config, b) for b in config.default_bindings]
    state = SimpleNamespace(warm_pools=())
    assert pool_message(state, pooled) == pool_message(state, pooled)  # type: ignore[arg-type]
    fresh = pool_message(state, pooled)  # type: ignore[arg-type]
    assert fresh is not None and (fresh.size, fresh.ready, fresh.claims) == (2, 0, 0)
    state.warm_pools = (
        runner_pb2.WarmPoolState(profile_name="pooled", size=2, ready=5, claims=7),
        runner_pb2.WarmPoolState(profile_name="bigger", size=5, ready=1, error="no image"),
    )
    reported = pool_message(state, pooled)  # type: ignore[arg-type]
    assert reported is not None and (reported.size, reported.ready, reported.claims) == (2, 2, 7)
    other = pool_message(state, bigger)  # type: ignore[arg-type]
    assert other is not None and (other.size, other.ready, other.error) == (5, 1, "no image")
    unpooled = parse_config(CONFIG.replace("SIZE", "0"), "platform.yaml")
    assert pool_message(state, resolve_binding(unpooled, unpooled.default_bindings[0])) is None  # type: ignore[arg-type]
