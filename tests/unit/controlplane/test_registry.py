"""The runner registry: health from heartbeats, superseded connections, bindings."""

from __future__ import annotations

from sandboxd.config import load_config
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd_protocol.sandboxd_v1 import runner_pb2


class FakeClock:
    """A controllable monotonic clock (time is the only thing replaced here)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def register(runner_id: str, group: str = "") -> runner_pb2.Register:
    return runner_pb2.Register(
        runner_id=runner_id,
        runner_group_id=group,
        capabilities=runner_pb2.Capabilities(cpu_millicores=4000, architectures=["amd64"]),
    )


def test_health_follows_heartbeats_and_connection() -> None:
    clock = FakeClock()
    registry = RunnerRegistry(load_config(None), health_timeout=10, clock=clock)
    state, conn = registry.register(register("r1"))
    assert registry.is_healthy(state)
    clock.now += 9.5
    assert registry.heartbeat("r1", conn, runner_pb2.Resources(running_sandboxes=2))
    assert registry.is_healthy(state) and state.resources.running_sandboxes == 2
    clock.now += 10.5
    assert not registry.is_healthy(state)
    registry.disconnect("r1", conn)
    assert not registry.is_healthy(state)
    assert registry.get("r1") is state  # still listed


def test_a_connection_back_from_a_silence_is_not_trusted_again() -> None:
    """After a partition heals, heartbeats can flow on the old connection while the control
    plane's sends on it are still stuck in TCP backoff: the runner must redial first."""
    clock = FakeClock()
    registry = RunnerRegistry(load_config(None), health_timeout=10, clock=clock)
    state, conn = registry.register(register("r1"))
    clock.now += 12
    assert not registry.heartbeat("r1", conn, runner_pb2.Resources())  # the stream is ended
    assert not registry.is_healthy(state)
    _, fresh = registry.register(register("r1"))  # the runner redials
    assert registry.is_healthy(state)
    assert registry.heartbeat("r1", fresh, runner_pb2.Resources())


def test_redial_supersedes_old_connection() -> None:
    registry = RunnerRegistry(load_config(None))
    state, old = registry.register(register("r1"))
    _, new = registry.register(register("r1"))
    assert not registry.heartbeat("r1", old, runner_pb2.Resources())
    registry.disconnect("r1", old)  # the old stream ending must not take the new one down
    assert registry.is_healthy(state)
    assert registry.is_current("r1", new)


def test_default_bindings_and_group() -> None:
    registry = RunnerRegistry(load_config(None))
    state, _ = registry.register(register("r1"))
    assert state.profile_names == ("default", "locked-down")
    assert state.runner_group_id == "default"
    state2, _ = registry.register(register("r2", group="east"))
    assert state2.runner_group_id == "east"


def test_iteration_is_sorted_and_resumable() -> None:
    registry = RunnerRegistry(load_config(None))
    for runner_id in ["c", "a", "b", "d"]:
        registry.register(register(runner_id))
    assert [s.runner_id for s in registry.iter_from()] == ["a", "b", "c", "d"]
    assert [s.runner_id for s in registry.iter_from("b")] == ["c", "d"]
    assert [s.runner_id for s in registry.iter_from("b", inclusive=True)] == ["b", "c", "d"]
