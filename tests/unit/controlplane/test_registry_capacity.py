"""The registry's incremental bookkeeping: reserved totals and the load index never drift."""

from __future__ import annotations

import random

from sandboxd.config import parse_config
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd_protocol.sandboxd_v1 import runner_pb2

CONFIG = """
profiles:
  - display_name: default
  - display_name: gpu
    spec: {gpu_types: [H100]}
runners:
  - runner_id: gpu-1
    bindings: [{profile: gpu, is_default: true}]
  - runner_id: gpu-2
    bindings: [{profile: gpu, is_default: true}]
default_bindings:
  - {profile: default, is_default: true}
"""

GIB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def register(
    registry: RunnerRegistry,
    runner_id: str,
    cpu: int = 8000,
    gpus: int = 0,
    statuses: list[runner_pb2.BackendStatus] | None = None,
) -> int:
    capabilities = runner_pb2.Capabilities(
        cpu_millicores=cpu,
        memory_bytes=16 * GIB,
        gpu_count=gpus,
        gpu_types=["H100"] if gpus else [],
        backend_statuses=statuses or [],
    )
    _, connection = registry.register(
        runner_pb2.Register(runner_id=runner_id, capabilities=capabilities)
    )
    return connection


def sums(state: RunnerState) -> tuple[int, int, int]:
    values = list(state.reservations.values())
    return (
        sum(r.cpu_millicores for r in values),
        sum(r.memory_bytes for r in values),
        sum(r.gpu_count for r in values),
    )


def expected_order(registry: RunnerRegistry) -> list[str]:
    """The order placement used to compute by checking everyone (its old ``min`` key)."""
    placeable = [
        s
        for s in registry.iter_from()
        if s.connection_id is not None and s.support.working and s.profiles
    ]
    placeable.sort(
        key=lambda s: (len(s.reservations), -s.available.available_cpu_millicores, s.runner_id)
    )
    return [s.runner_id for s in placeable]


def check(registry: RunnerRegistry) -> None:
    for state in registry.iter_from():
        cpu, memory, gpus = sums(state)
        assert (
            state.reserved_cpu_millicores,
            state.reserved_memory_bytes,
            state.reserved_gpu_count,
        ) == (cpu, memory, gpus)
        caps = state.capabilities
        assert state.available == runner_pb2.Resources(
            available_cpu_millicores=max(0, caps.cpu_millicores - cpu),
            available_memory_bytes=max(0, caps.memory_bytes - memory),
            available_gpu_count=max(0, caps.gpu_count - gpus),
            running_sandboxes=len(state.reservations),
        )
    order = expected_order(registry)
    assert [s.runner_id for s in registry.by_load()] == order
    gpu_runners = {s.runner_id for s in registry.iter_from() if s.capabilities.gpu_count}
    assert [s.runner_id for s in registry.by_load(with_gpus=True)] == [
        r for r in order if r in gpu_runners
    ]


def test_totals_and_order_never_drift_under_random_churn() -> None:
    rng = random.Random(8)
    registry = RunnerRegistry(parse_config(CONFIG, "t.yaml"))
    ids = ["a", "b", "c", "d", "gpu-1", "gpu-2"]
    connections = {r: register(registry, r, gpus=4 if r.startswith("gpu") else 0) for r in ids}
    for _ in range(3000):
        runner_id = rng.choice([*ids, "ghost"])  # unknown runners are ignored
        sandbox_id = f"sb-{rng.randrange(40)}"
        roll = rng.random()
        if roll < 0.5:  # also replaces an existing reservation of the same sandbox
            amount = runner_pb2.Reservation(
                cpu_millicores=rng.choice((0, 100, 500, 3000, 9000)),
                memory_bytes=rng.choice((0, GIB, 20 * GIB)),
                gpu_count=rng.randrange(3),
            )
            registry.reserve(runner_id, sandbox_id, amount)
            amount.cpu_millicores += 1  # the caller's message changing later changes nothing
        elif roll < 0.9:
            registry.release(runner_id, sandbox_id)  # idempotent, also for unknown ids
        elif roll < 0.95 and runner_id != "ghost":
            if registry.is_current(runner_id, connections[runner_id]):
                registry.disconnect(runner_id, connections[runner_id])
            else:
                cpu = rng.choice((2000, 8000, 64000))
                gpus = 4 if runner_id.startswith("gpu") else 0
                connections[runner_id] = register(registry, runner_id, cpu=cpu, gpus=gpus)
        elif runner_id != "ghost":
            broken = runner_pb2.BackendStatus(name="local", reason="needs root")
            working = runner_pb2.BackendStatus(name="local", available=True)
            statuses = [rng.choice((broken, working))]
            connections[runner_id] = register(registry, runner_id, statuses=statuses)
        check(registry)


def test_the_index_holds_only_connected_runners_with_a_backend_and_a_profile() -> None:
    config = parse_config("profiles: [{display_name: default}]\n", "t.yaml")  # no bindings
    registry = RunnerRegistry(config)
    register(registry, "unbound")
    assert list(registry.by_load()) == []
    registry.reload(parse_config(CONFIG, "t.yaml"))
    assert [s.runner_id for s in registry.by_load()] == ["unbound"]

    connection = register(registry, "b")
    registry.reserve("b", "sb-1", runner_pb2.Reservation(cpu_millicores=100))
    assert [s.runner_id for s in registry.by_load()] == ["unbound", "b"]
    registry.disconnect("b", connection)
    assert [s.runner_id for s in registry.by_load()] == ["unbound"]
    registry.release("b", "sb-1")
    register(registry, "b", statuses=[runner_pb2.BackendStatus(name="local", reason="x")])
    assert [s.runner_id for s in registry.by_load()] == ["unbound"]
    register(registry, "b", statuses=[runner_pb2.BackendStatus(name="local", available=True)])
    assert [s.runner_id for s in registry.by_load()] == ["b", "unbound"]  # same load: by id


def test_runners_with_the_same_bindings_share_resolved_profiles() -> None:
    registry = RunnerRegistry(parse_config(CONFIG, "t.yaml"))
    for runner_id in ("a", "b", "gpu-1", "gpu-2"):
        register(registry, runner_id)
    a, b, gpu1, gpu2 = (registry.get(r) for r in ("a", "b", "gpu-1", "gpu-2"))
    assert a is not None and b is not None and gpu1 is not None and gpu2 is not None
    assert a.profiles is b.profiles
    assert gpu1.profiles is gpu2.profiles  # equal entries of their own
    assert a.profiles[0].quantities.cpu_limit is None


def test_name_tallies_follow_registrations_heartbeats_and_reloads() -> None:
    registry = RunnerRegistry(parse_config(CONFIG, "t.yaml"))
    connection = register(registry, "a")
    register(registry, "gpu-1")
    assert registry.offers_profile("default") and registry.offers_profile("gpu")
    assert registry.runners_offering("default") == 1
    assert not registry.lists_images()
    registry.heartbeat("a", connection, runner_pb2.Resources(), images=["python:3.11"])
    assert registry.lists_image("python:3.11") and not registry.lists_image("busybox")
    registry.heartbeat("a", connection, runner_pb2.Resources(), images=["busybox"])
    assert registry.lists_image("busybox") and not registry.lists_image("python:3.11")
    registry.reload(parse_config("profiles: [{display_name: other}]\n", "t.yaml"))
    assert not registry.offers_profile("default") and not registry.offers_profile("gpu")
    assert list(registry.by_load()) == []  # no binding left: nothing to place on
