"""Placement asks what a runner's backend can do, backs off failing runners, and explains.

Real registry, runners registered with the capabilities a runner reports; a fake clock
drives health and backoff.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from sandboxd.admin_cli import _lifecycle_line
from sandboxd.config import parse_config
from sandboxd.controlplane.backend_support import support_of
from sandboxd.controlplane.discovery import DiscoveryService
from sandboxd.controlplane.metrics import PlatformCollector
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.rejections import MAX_LISTED_VIOLATIONS
from sandboxd.controlplane.start_backoff import backoff_seconds, blames_runner
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError, status_trailers
from sandboxd_protocol.sandboxd_v1 import admin_pb2, runner_pb2
from sandboxd_protocol.v1beta2 import discovery_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

GIB = 1024**3
CONFIG = """
profiles:
  - display_name: default
    spec:
      network:
        egress: {default: internet, modes: {internet: {type: internet}, none: {type: none}}}
        ingress: {default: internal, modes: {public: {type: public}, internal: {type: internal}}}
  - display_name: gpu
    spec: {gpu_types: [H100]}
default_bindings:
  - {profile: default, is_default: true}
  - {profile: gpu}
"""
LOCAL = runner_pb2.BackendStatus(
    name="local",
    available=True,
    egress_types=["none", "internet", "allowlist"],
    ingress_types=["public", "internal"],
)
NEEDS_ROOT = runner_pb2.BackendStatus(name="local", reason="needs root")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(**fields: object) -> runner_pb2.BackendStatus:
    status = runner_pb2.BackendStatus()
    status.CopyFrom(LOCAL)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(status, name)[:] = value
        else:
            setattr(status, name, value)
    return status


def make(*runners: tuple[str, list[runner_pb2.BackendStatus]], gpus: int = 0) -> RunnerRegistry:
    registry = RunnerRegistry(parse_config(CONFIG, "t.yaml"), clock=Clock(), health_timeout=3600)
    for runner_id, statuses in runners:
        registry.register(
            runner_pb2.Register(
                runner_id=runner_id,
                capabilities=runner_pb2.Capabilities(
                    cpu_millicores=8000,
                    memory_bytes=16 * GIB,
                    gpu_count=gpus,
                    gpu_types=["H100"] if gpus else [],
                    backend_statuses=statuses,
                ),
            )
        )
    return registry


def start(**fields: object) -> g.StartSandboxRequest:
    fields.setdefault("command", "sleep")
    return g.StartSandboxRequest(**fields)  # type: ignore[arg-type]


def placed_on(registry: RunnerRegistry, **fields: object) -> str:
    return place(registry, parse_start_request(start(**fields))).runner.runner_id


def refusal(registry: RunnerRegistry, **fields: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        place(registry, parse_start_request(start(**fields)))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    return caught.value


def reserve(registry: RunnerRegistry, runner_id: str, sandbox_id: str) -> None:
    registry.reserve(runner_id, sandbox_id, runner_pb2.Reservation(cpu_millicores=100))


# -- what backends work -------------------------------------------------------------------


def test_a_runner_without_a_working_backend_is_never_chosen_and_says_why() -> None:
    registry = make(("broken", [NEEDS_ROOT]), ("working", [LOCAL]))
    for n in range(5):  # "working" gets busier; "broken" stays the least loaded
        assert placed_on(registry) == "working"
        reserve(registry, "working", f"sb-{n}")
    error = refusal(registry, runner_ids=["broken"])
    assert [(v.field, v.description) for v in error.violations] == [
        ("runner_ids", "runner broken: no working backend (local: needs root)")
    ]
    assert error.metadata["broken"] == "no working backend"
    assert "runner broken: no working backend (local: needs root)" in error.message


def test_discovery_still_lists_a_runner_without_a_backend() -> None:
    registry = make(("broken", [NEEDS_ROOT]))
    listed = DiscoveryService(registry).list_runners(discovery_pb2.ListAvailableRunnersRequest())
    assert [(r.runner_id, r.healthy) for r in listed.runners] == [("broken", True)]


def test_every_backend_is_named_when_none_works() -> None:
    down = runner_pb2.BackendStatus(name="kubernetes", reason="no kubeconfig")
    support = support_of(runner_pb2.Capabilities(backend_statuses=[NEEDS_ROOT, down]))
    assert support.problem == "no working backend (local: needs root; kubernetes: no kubeconfig)"


def test_runners_that_do_not_report_backends_are_trusted_as_before() -> None:
    support = support_of(runner_pb2.Capabilities(backends=["local"]))
    assert support.working and support.gpus
    assert support.allows_egress("allowlist") and support.allows_ingress("public")
    registry = make(("old", []), gpus=2)
    gpu = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="H100"))
    assert placed_on(registry, resource_limits=gpu, profile_names=["gpu"]) == "old"


def test_the_backends_egress_types_count_not_only_the_profiles() -> None:
    registry = make(("no-nat", [backend(egress_types=["none"])]), ("nat", [LOCAL]))
    reserve(registry, "nat", "sb-1")  # no-nat is the least loaded
    assert placed_on(registry) == "nat"  # default egress mode: internet
    assert placed_on(registry, network=g.NetworkOptions(egress_mode="none")) == "no-nat"
    error = refusal(registry, runner_ids=["no-nat"])
    assert [(v.field, v.description) for v in error.violations] == [
        (
            "network.egress_mode",
            "runner no-nat, profile default: egress mode 'internet' needs internet egress, "
            "which this runner's backend (local) cannot provide (it provides: ['none'])",
        )
    ]


def test_the_backends_ingress_types_count() -> None:
    registry = make(("no-ports", [backend(ingress_types=[])]), ("ports", [LOCAL]))
    reserve(registry, "ports", "sb-1")
    network = g.NetworkOptions(ingress_mode="public", exposed_ports=[8080])
    assert placed_on(registry, network=network) == "ports"
    assert placed_on(registry) == "no-ports"  # no ports exposed: ingress does not matter
    error = refusal(registry, network=network, runner_ids=["no-ports"])
    assert [v.field for v in error.violations] == ["network.ingress_mode"]
    assert "cannot provide (it provides: none)" in error.violations[0].description


def test_gpus_need_a_backend_that_attaches_them() -> None:
    registry = make(("no-passthrough", [LOCAL]), gpus=2)
    gpu = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="H100"))
    error = refusal(registry, resource_limits=gpu, profile_names=["gpu"])
    assert [(v.field, v.description) for v in error.violations] == [
        (
            "resource_limits.gpu",
            "runner no-passthrough, profile gpu: this runner's backend (local) cannot attach "
            "GPUs to sandboxes",
        )
    ]
    registry = make(("passthrough", [backend(gpus=True)]), gpus=2)
    assert placed_on(registry, resource_limits=gpu, profile_names=["gpu"]) == "passthrough"


# -- backoff --------------------------------------------------------------------------------


def test_backoff_periods_grow_and_are_capped() -> None:
    assert [backoff_seconds(n) for n in range(1, 10)] == [0, 0, 5, 10, 20, 40, 80, 160, 300]
    assert backoff_seconds(1000) == 300


def test_a_runner_whose_starts_keep_failing_is_backed_off_then_tried_again() -> None:
    registry = make(("flaky", [LOCAL]), ("steady", [LOCAL]))
    clock = registry._clock
    assert isinstance(clock, Clock)
    reserve(registry, "steady", "sb-1")  # flaky is the least loaded
    for n in range(2):
        registry.note_start("flaky", ok=False, reason="backend exploded\n  badly")
        assert placed_on(registry) == "flaky", n  # two failures are not a pattern yet
    registry.note_start("flaky", ok=False, reason="backend exploded\n  badly")
    assert placed_on(registry) == "steady"
    error = refusal(registry, runner_ids=["flaky"])
    (violation,) = error.violations
    assert violation.field == "runner_ids"
    assert violation.description.startswith(
        "runner flaky: backed off after 3 failed starts: backend exploded badly, until 20"
    )
    assert error.metadata["flaky"] == "backed off"

    clock.now += 5  # the period ends: tried again
    assert placed_on(registry) == "flaky"
    registry.note_start("flaky", ok=False, reason="again")
    assert placed_on(registry) == "steady"
    clock.now += 9.9  # the fourth failure doubled the period
    assert placed_on(registry) == "steady"
    clock.now += 0.2
    registry.note_start("flaky", ok=True)  # one success clears the record
    registry.note_start("flaky", ok=False, reason="once")
    assert placed_on(registry) == "flaky"
    registry.note_start("ghost", ok=False, reason="unknown runners are ignored")


@pytest.mark.parametrize(
    ("code", "reason", "blamed"),
    [
        (grpc.StatusCode.UNAVAILABLE, "CWSANDBOX_BACKEND_UNAVAILABLE", True),
        (grpc.StatusCode.UNAVAILABLE, "CWSANDBOX_RUNNER_UNAVAILABLE", True),
        (grpc.StatusCode.INTERNAL, "", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED", True),
        # The request's own fault: any caller could otherwise push every runner into backoff.
        (grpc.StatusCode.FAILED_PRECONDITION, "", False),  # e.g. its command does not exist
        (grpc.StatusCode.INVALID_ARGUMENT, "CWSANDBOX_INVALID_ARGUMENT", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "CWSANDBOX_CPU_QUOTA_EXCEEDED", False),
    ],
)
def test_only_the_runners_own_failures_count(
    code: grpc.StatusCode, reason: str, blamed: bool
) -> None:
    assert blames_runner(ApiError(code, "x", reason=reason)) is blamed


# -- explanations stay small ------------------------------------------------------------------


def test_a_rejection_on_many_runners_is_capped_and_fits_in_a_trailer() -> None:
    registry = make(*((f"r{i:04d}", [LOCAL]) for i in range(2000)))
    error = refusal(registry, resource_limits=g.ResourceRequest(memory="64Gi"))
    assert 5 <= len(error.violations) <= MAX_LISTED_VIOLATIONS
    assert error.violations[0].description.startswith("runner r0000, profile default:")
    listed = len({v.description.split(",")[0] for v in error.violations})
    assert error.metadata["runners_considered"] == "2000"
    assert error.metadata["runners_not_listed"] == str(2000 - listed)
    assert f"{2000 - listed} more runners not listed" in error.message
    size = sum(len(value) for _, value in status_trailers(error))
    assert size < 6000  # gRPC clients drop trailers over 8 KiB at random, 16 KiB always


def test_a_named_profile_rejection_counts_only_runners_offering_it() -> None:
    registry = make(*((f"r{i:04d}", [LOCAL]) for i in range(300)))
    registry.register(runner_pb2.Register(runner_id="zz-unbound"))  # offers both anyway
    error = refusal(
        registry, profile_names=["gpu"], resource_limits=g.ResourceRequest(memory="64Gi")
    )
    assert error.reason == "CWSANDBOX_PROFILE_MISMATCH"
    assert error.metadata["runners_considered"] == "301"


# -- the runner's disk ------------------------------------------------------------------


def disk_room(registry: RunnerRegistry, runner_id: str, room: int | None) -> None:
    """A heartbeat of ``runner_id`` saying how large a writable layer it can make now."""
    connection = registry.get(runner_id).connection_id  # type: ignore[union-attr]
    resources = runner_pb2.Resources()
    if room is not None:
        resources.disk_room_bytes = room
    assert registry.heartbeat(runner_id, connection or 0, resources)


def test_a_runner_whose_disk_is_full_is_skipped_and_says_so() -> None:
    """The profile's layer is 10 GiB (the default ceiling); "full" has room for 16 MiB, so a
    Start there would fail: placement sends it to "roomy", though "full" is less loaded."""
    registry = make(("full", [LOCAL]), ("roomy", [LOCAL]))
    reserve(registry, "roomy", "sb-0")
    disk_room(registry, "full", 16 << 20)
    assert placed_on(registry) == "roomy"
    error = refusal(registry, runner_ids=["full"])
    assert [(v.field, v.description) for v in error.violations] == [
        (
            "runner_ids",
            "runner full, profile default: its disk is full: it has room for a writable "
            "layer of at most 16Mi, the profile's is 10Gi",
        )
    ]
    disk_room(registry, "full", None)  # room again: any layer fits
    assert placed_on(registry) == "full"


def test_a_runner_that_does_not_report_its_disk_is_trusted_as_before() -> None:
    registry = make(("old", [LOCAL]))
    disk_room(registry, "old", None)
    assert placed_on(registry) == "old"


def test_a_profile_whose_layer_fits_the_room_left_still_goes_there() -> None:
    config = CONFIG.replace("    spec:\n", "    spec:\n      resource_ceilings: {disk: 8Mi}\n", 1)
    registry = RunnerRegistry(parse_config(config, "t.yaml"), clock=Clock(), health_timeout=3600)
    registry.register(
        runner_pb2.Register(
            runner_id="small",
            capabilities=runner_pb2.Capabilities(
                cpu_millicores=8000, memory_bytes=16 * GIB, backend_statuses=[LOCAL]
            ),
        )
    )
    disk_room(registry, "small", 16 << 20)
    assert placed_on(registry) == "small"


class _Empty:
    """Stand-in for the sandbox records, open streams and reconcilers of a control plane with
    no sandboxes: the gauges of runners do not read them."""

    def live(self) -> list[object]:
        return []

    def __len__(self) -> int:
        return 0

    def queue_depth(self) -> int:
        return 0


def _runners_by_state(registry: RunnerRegistry) -> dict[str, float]:
    empty: Any = _Empty()
    [family] = [
        m for m in PlatformCollector(registry, empty, empty, empty).collect()
        if m.name == "sandboxd_runners"
    ]  # fmt: skip
    return {sample.labels["state"]: sample.value for sample in family.samples}


def test_a_backed_off_runner_is_counted_apart_while_its_backoff_lasts() -> None:
    """The operator's signal (``sandboxd_runners{state="backed_off"}``) that a runner takes
    no Starts although it is healthy and not cordoned."""
    registry = make(("flaky", [LOCAL]), ("steady", [LOCAL]))
    clock = registry._clock
    assert isinstance(clock, Clock)
    for _ in range(3):
        registry.note_start("flaky", ok=False, reason="the host could not make the network")
    assert _runners_by_state(registry) == {
        "healthy": 2, "unhealthy": 0, "cordoned": 0, "backed_off": 1
    }  # fmt: skip
    listed = DiscoveryService(registry).list_runners(discovery_pb2.ListAvailableRunnersRequest())
    skipped = {r.runner_id for r in listed.runners if r.HasField("backed_off_until")}
    assert skipped == {"flaky"}  # discovery (and the console) show it too
    clock.now += 5  # the period ends: counted as placeable again
    assert _runners_by_state(registry)["backed_off"] == 0
    listed = DiscoveryService(registry).list_runners(discovery_pb2.ListAvailableRunnersRequest())
    assert not any(r.HasField("backed_off_until") for r in listed.runners)


def test_a_runner_that_works_again_says_so_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """The operator who saw "placement skips it" in the log also sees the end of it."""
    registry = make(("flaky", [LOCAL]))
    registry.note_start("flaky", ok=False, reason="once")
    registry.note_start("flaky", ok=True)  # a failure or two is no pattern: nothing said
    assert "started again" not in caplog.text
    for _ in range(3):
        registry.note_start("flaky", ok=False, reason="no veth")
    assert "runner flaky: 3 sandbox starts failed in a row (last: no veth)" in caplog.text
    registry.note_start("flaky", ok=True)
    assert (
        "runner flaky: a sandbox started again after 3 failed starts in a row; placement uses "
        "it again" in caplog.text
    )


def test_the_cli_says_when_and_why_placement_skips_a_runner() -> None:
    state = admin_pb2.RunnerLifecycle(runner_id="r1", healthy=True, live_sandboxes=2)
    assert _lifecycle_line(state) == "runner r1: schedulable, healthy, 2 sandbox(es)"
    state.failed_starts, state.last_start_failure = 2, "no veth"
    assert _lifecycle_line(state).endswith("; 2 failed start(s) in a row (last: no veth)")
    state.failed_starts = 3
    state.backed_off_until.FromDatetime(datetime(2026, 12, 5, 3, 0, 5, tzinfo=UTC))
    assert _lifecycle_line(state).endswith(
        "; placement skips it until 2026-12-05T03:00:05+00:00 after 3 failed start(s) in a "
        "row (last: no veth)"
    )
