"""Placement by walking the load index picks what checking every runner picked.

The reference below is the scheduler's old algorithm: check every usable runner×profile
completely and take the minimum of (sandboxes, -free CPU, runner id). Random registries
(mixed sizes and load, GPU runners, broken backends, unhealthy and backed-off runners) and
random requests must get the same runner and profile from both, or both be refused.
"""

from __future__ import annotations

import random

import pytest

import sandboxd_protocol.quantities
from sandboxd.config import parse_config
from sandboxd.controlplane import placement
from sandboxd.controlplane.placement import Placement, place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_spec import build_spec
from sandboxd.controlplane.start_request import SandboxRequest, parse_start_request
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

GIB = 1024**3
CONFIG = """
profiles:
  - display_name: default
    spec:
      resource_defaults:
        {cpu_request: 500m, memory_request: 512Mi, cpu_limit: "1", memory_limit: 1Gi}
      resource_ceilings: {cpu: "4", memory: 8Gi, disk: 5Gi, pids: 100}
      network:
        egress: {default: internet, modes: {internet: {type: internet}, none: {type: none}}}
        ingress: {default: internal, modes: {public: {type: public}, internal: {type: internal}}}
  - display_name: locked-down
    spec:
      container_image: busybox
      resource_ceilings: {cpu: "2", memory: 2Gi}
      network:
        egress: {default: none, modes: {none: {type: none}}}
  - display_name: gpu
    spec:
      gpu_types: [H100]
      resource_ceilings: {gpu: 4, cpu: "16"}
default_bindings:
  - {profile: default, is_default: true}
  - {profile: locked-down}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpu_entries(count: int) -> str:
    return "runners:\n" + "".join(
        f"  - runner_id: r{i:03d}\n"
        "    bindings: [{profile: gpu, is_default: true}, {profile: default}]\n"
        for i in range(count)
        if i % 5 == 0
    )


def build(rng: random.Random, count: int) -> tuple[RunnerRegistry, Clock]:
    clock = Clock()
    registry = RunnerRegistry(
        parse_config(CONFIG + gpu_entries(count), "t.yaml"), health_timeout=10, clock=clock
    )
    connections = {}
    for i in range(count):
        runner_id = f"r{i:03d}"
        gpus = rng.choice((2, 4)) if i % 5 == 0 else 0
        statuses: list[runner_pb2.BackendStatus] = []
        kind = rng.random()
        if kind < 0.1:
            statuses = [runner_pb2.BackendStatus(name="local", reason="needs root")]
        elif kind < 0.25:
            egress = rng.choice((["none"], ["none", "internet", "allowlist"]))
            statuses = [
                runner_pb2.BackendStatus(
                    name="local",
                    available=True,
                    egress_types=egress,
                    ingress_types=rng.choice(([], ["public", "internal"])),
                    gpus=rng.random() < 0.5,
                )
            ]
        _, connections[runner_id] = registry.register(
            runner_pb2.Register(
                runner_id=runner_id,
                capabilities=runner_pb2.Capabilities(
                    cpu_millicores=rng.choice((2000, 4000, 8000)),
                    memory_bytes=rng.choice((2, 4, 16)) * GIB,
                    gpu_count=gpus,
                    gpu_types=[rng.choice(("H100", "A100"))] if gpus else [],
                    images=rng.choice(([], ["python:3.11", "busybox"], ["python:3.11"])),
                    backend_statuses=statuses,
                ),
            )
        )
        for n in range(rng.randrange(4)):
            registry.reserve(
                runner_id,
                f"load-{i}-{n}",
                runner_pb2.Reservation(
                    cpu_millicores=rng.choice((100, 500, 1500)),
                    memory_bytes=rng.choice((256 << 20, GIB)),
                    gpu_count=rng.randrange(2) if gpus else 0,
                ),
            )
    clock.now += 8
    for runner_id, connection in connections.items():
        roll = rng.random()
        if roll < 0.05:
            registry.disconnect(runner_id, connection)
        elif roll < 0.9:  # the rest will have missed their heartbeats
            registry.heartbeat(runner_id, connection, runner_pb2.Resources())
        if rng.random() < 0.05:
            for _ in range(3):
                registry.note_start(runner_id, ok=False, reason="boom")
    clock.now += 4
    return registry, clock


def reference(registry: RunnerRegistry, request: SandboxRequest) -> Placement | None:
    """The old algorithm: every usable runner×profile checked, the minimum of the old key."""
    ids = list(dict.fromkeys(request.runner_ids))
    runners = [registry.get(r) for r in ids] if ids else list(registry.iter_from())
    fits = []
    for runner in runners:
        assert runner is not None
        usable = (
            registry.is_healthy(runner)
            and runner.link is not None
            and runner.support.working
            and not registry.backed_off(runner)
        )
        if not usable:
            continue
        names = request.profile_names
        for profile in runner.profiles:
            if (profile.profile_name in names) if names else profile.is_default:
                fit = placement._fit_profile(request, profile)
                result = placement._check(request, runner, profile, fit)
                if isinstance(result, Placement):
                    fits.append(result)
    if not fits:
        return None
    return min(
        fits,
        key=lambda p: (
            len(p.runner.reservations),
            -p.runner.available.available_cpu_millicores,
            p.runner.runner_id,
        ),
    )


def random_request(rng: random.Random, count: int) -> g.StartSandboxRequest:
    fields: dict[str, object] = {"command": "sleep"}
    shape = rng.randrange(9)
    if shape == 1:
        fields["resource_limits"] = g.ResourceRequest(cpu=rng.choice(("2", "4", "6")))
    elif shape == 2:
        fields["resource_requests"] = g.ResourceRequest(memory=rng.choice(("1Gi", "3Gi")))
    elif shape == 3:
        fields["profile_names"] = rng.choice((["locked-down"], ["locked-down", "default"]))
    elif shape == 4:
        gpu = g.GpuRequest(gpu_count=rng.choice((1, 2)), gpu_type=rng.choice(("H100", "", "A1")))
        fields["resource_limits"] = g.ResourceRequest(gpu=gpu)
    elif shape == 5:
        fields["network"] = g.NetworkOptions(egress_mode=rng.choice(("internet", "none")))
    elif shape == 6:
        fields["network"] = g.NetworkOptions(ingress_mode="public", exposed_ports=[8080])
    elif shape == 7:
        fields["runner_ids"] = [f"r{rng.randrange(count):03d}" for _ in range(3)]
    elif shape == 8:
        fields["container_image"] = "busybox"
    return g.StartSandboxRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_the_index_walk_picks_what_checking_everyone_picked(seed: int) -> None:
    rng = random.Random(seed)
    count = 60
    registry, _ = build(rng, count)
    placed = refused = 0
    for step in range(250):
        request = parse_start_request(random_request(rng, count))
        expected = reference(registry, request)
        try:
            chosen = place(registry, request)
        except ApiError as error:
            assert expected is None, (request, expected.runner.runner_id if expected else None)
            assert error.reason in ("CWSANDBOX_NO_SUITABLE_RUNNER", "CWSANDBOX_PROFILE_MISMATCH")
            refused += 1
            continue
        assert expected is not None, (request, chosen.runner.runner_id)
        assert (chosen.runner.runner_id, chosen.profile.profile_name) == (
            expected.runner.runner_id,
            expected.profile.profile_name,
        )
        assert chosen == expected
        placed += 1
        # Start's bookkeeping, and now and then a sandbox ending somewhere.
        registry.reserve(
            chosen.runner.runner_id,
            f"sb-{step}",
            runner_pb2.Reservation(
                cpu_millicores=chosen.cpu_request,
                memory_bytes=chosen.memory_request,
                gpu_count=chosen.gpu_count,
            ),
        )
        if rng.random() < 0.4:
            runner = rng.choice(list(registry.iter_from()))
            if runner.reservations:
                registry.release(runner.runner_id, rng.choice(list(runner.reservations)))
    assert placed > 50 and refused > 10  # both paths were exercised


def test_no_quantity_is_parsed_per_start(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = build(random.Random(1), 20)
    requests = [
        parse_start_request(g.StartSandboxRequest(command="sleep")),
        parse_start_request(g.StartSandboxRequest(command="sleep", profile_names=["gpu"])),
        parse_start_request(
            g.StartSandboxRequest(command="sleep", resource_limits=g.ResourceRequest(cpu="64"))
        ),
    ]

    def refuse(value: object) -> None:
        raise AssertionError(f"quantity {value!r} parsed during placement")

    monkeypatch.setattr(sandboxd_protocol.quantities, "parse_quantity", refuse)
    for request in requests:
        try:
            chosen = place(registry, request)
        except ApiError:
            continue
        spec = build_spec("sb-x", request, chosen)
        assert spec.limits.max_disk_bytes == (chosen.profile.quantities.max_disk_bytes or 0)


def test_a_request_every_profile_refuses_is_explained_without_walking_runners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, _ = build(random.Random(2), 30)

    def no_walk(*, with_gpus: bool = False) -> None:
        raise AssertionError("walked the load index although no profile could fit")

    monkeypatch.setattr(registry, "by_load", no_walk)
    request = g.StartSandboxRequest(
        command="sleep",
        profile_names=["locked-down"],
        network=g.NetworkOptions(egress_mode="internet"),
    )
    with pytest.raises(ApiError) as caught:
        place(registry, parse_start_request(request))
    assert caught.value.reason == "CWSANDBOX_PROFILE_MISMATCH"
    assert "network.egress_mode" in {v.field for v in caught.value.violations}
