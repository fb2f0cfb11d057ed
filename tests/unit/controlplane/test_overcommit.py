"""Overcommit ratios: configuration, placement, the runner's ledger and discovery agree."""

from __future__ import annotations

import pytest

from cwsandbox._types import RunnerResources
from cwsandbox.cli._render import overcommit_text
from sandboxd.config import ConfigError, load_config, parse_config
from sandboxd.controlplane.discovery import DiscoveryService
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError
from sandboxd.runner.resources import InsufficientCapacityError, Reservation, ReservationLedger
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import discovery_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

GIB = 1024**3
MIB = 1024**2

CONFIG = """
profiles:
  - display_name: default
    spec:
      resource_defaults: {cpu_request: 500m, memory_request: 1Gi, cpu_limit: "1", memory_limit: 2Gi}
overcommit: {cpu: 4}
runners:
  - runner_id: dense
    overcommit: {memory: 2}
    bindings: [{profile: default, is_default: true}]
  - runner_id: plain
    overcommit: {cpu: 1}
    bindings: [{profile: default, is_default: true}]
default_bindings:
  - {profile: default, is_default: true}
"""


def registry_with(config: str, *runner_ids: str) -> RunnerRegistry:
    registry = RunnerRegistry(parse_config(config, "test.yaml"))
    for runner_id in runner_ids:
        registry.register(
            runner_pb2.Register(
                runner_id=runner_id,
                capabilities=runner_pb2.Capabilities(
                    cpu_millicores=2000, memory_bytes=4 * GIB, images=["python:3.11"]
                ),
            )
        )
    return registry


def start_on(registry: RunnerRegistry, runner_id: str) -> str:
    request = parse_start_request(g.StartSandboxRequest(command="sleep", runner_ids=[runner_id]))
    chosen = place(registry, request)
    state = chosen.runner
    sandbox_id = f"sb-{state.running_sandboxes}-{len(state.reservations)}"
    while sandbox_id in state.reservations:
        sandbox_id += "x"
    amount = runner_pb2.Reservation(
        cpu_millicores=chosen.cpu_request, memory_bytes=chosen.memory_request
    )
    registry.reserve(state.runner_id, sandbox_id, amount)
    return sandbox_id


def test_ratios_fall_back_field_by_field() -> None:
    config = parse_config(CONFIG, "test.yaml")
    assert (config.overcommit.cpu, config.overcommit.memory) == (4.0, 1.0)
    dense = config.overcommit_for("dense")
    assert (dense.cpu, dense.memory) == (4.0, 2.0)
    plain = config.overcommit_for("plain")
    assert (plain.cpu, plain.memory) == (1.0, 1.0)
    assert config.overcommit_for("any-other") == config.overcommit


def test_a_file_without_overcommit_does_not_overcommit() -> None:
    config = parse_config("profiles: [{display_name: default}]\n", "test.yaml")
    assert (config.overcommit.cpu, config.overcommit.memory) == (1.0, 1.0)


def test_embedded_defaults_overcommit_cpu_only() -> None:
    config = load_config(None)
    assert (config.overcommit.cpu, config.overcommit.memory) == (16.0, 1.0)


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("overcommit: {cpu: 0.5}", "overcommit.cpu"),
        ("overcommit: {memory: 1000}", "overcommit.memory"),
        ("overcommit: {disk: 2}", "overcommit.disk"),
        (
            "runners: [{runner_id: r, overcommit: {cpu: -1}, "
            "bindings: [{profile: default, is_default: true}]}]",
            "runners[0].overcommit.cpu",
        ),
    ],
)
def test_bad_ratios_are_refused_with_their_path(snippet: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"profiles: [{{display_name: default}}]\n{snippet}\n", "bad.yaml")
    assert f"bad.yaml: {where}" in str(caught.value)


def test_placement_admits_requests_up_to_allocatable_times_the_ratio() -> None:
    registry = registry_with(CONFIG, "dense", "plain")
    # dense: 2 cores x 4 = 8 cores of 500m requests = 16; memory 4 GiB x 2 = 8 x 1 GiB: 8 fit.
    placed = [start_on(registry, "dense") for _ in range(8)]
    state = registry.get("dense")
    assert state is not None
    assert (state.reserved_cpu_millicores, state.reserved_memory_bytes) == (4000, 8 * GIB)
    assert state.free_cpu_millicores == 4000 and state.free_memory_bytes == 0
    with pytest.raises(ApiError) as caught:
        start_on(registry, "dense")
    assert [v.field for v in caught.value.violations] == ["resource_requests.memory"]
    registry.release("dense", placed[0])
    start_on(registry, "dense")
    # plain (no overcommit): 2 cores of 500m and 4 GiB of 1 GiB requests: 4 fit, not 5.
    for _ in range(4):
        start_on(registry, "plain")
    with pytest.raises(ApiError) as caught:
        start_on(registry, "plain")
    fields = [v.field for v in caught.value.violations]
    assert fields == ["resource_requests.cpu", "resource_requests.memory"]


def test_discovery_says_how_available_is_made() -> None:
    registry = registry_with(CONFIG, "dense")
    start_on(registry, "dense")
    state = registry.get("dense")
    assert state is not None
    message = DiscoveryService(registry).runner_message(state, discovery_pb2.RUNNER_VIEW_FULL)
    message = message.resources
    assert message.allocatable_cpu_millicores == 2000
    assert message.allocatable_memory_bytes == 4 * GIB
    assert message.requested_cpu_millicores == 500
    assert message.requested_memory_bytes == GIB
    assert (message.cpu_overcommit_ratio, message.memory_overcommit_ratio) == (4.0, 2.0)
    assert message.available_cpu_millicores == 2000 * 4 - 500
    assert message.available_memory_bytes == 4 * GIB * 2 - GIB
    res = RunnerResources.from_proto(message)
    assert overcommit_text(res) == "cpu 4x, mem 2x"


def test_resources_from_a_server_without_the_extension_read_as_no_overcommit() -> None:
    res = RunnerResources.from_proto(
        discovery_pb2.RunnerResourceSummary(available_cpu_millicores=100, running_sandboxes=1)
    )
    assert (res.cpu_overcommit_ratio, res.memory_overcommit_ratio) == (1.0, 1.0)
    assert res.requested_cpu_millicores == 0


def test_runner_ledger_uses_the_ratios_it_is_sent() -> None:
    ledger = ReservationLedger(Reservation(cpu_millicores=1000, memory_bytes=GIB, gpu_count=1))
    ledger.set_overcommit(16.0, 0.0)  # 0: a control plane that does not send the field
    assert ledger.capacity == Reservation(cpu_millicores=16000, memory_bytes=GIB, gpu_count=1)
    for i in range(64):
        ledger.reserve(f"sb-{i}", Reservation(cpu_millicores=250, memory_bytes=16 * MIB))
    with pytest.raises(InsufficientCapacityError) as caught:
        ledger.reserve("one-more", Reservation(cpu_millicores=250))
    assert caught.value.resource == "cpu_millicores"
    snapshot = ledger.snapshot()
    assert snapshot.available_cpu_millicores == 0
    assert snapshot.available_memory_bytes == GIB - 64 * 16 * MIB
    assert snapshot.running_sandboxes == 64
    assert all(ledger.release(f"sb-{i}") for i in range(64))
    assert ledger.reserved() == Reservation()
    ledger.set_overcommit(1.0, 1.0)
    assert ledger.capacity == ledger.allocatable
