"""The scheduler's choices and its explained rejections (real registry, constructed runners)."""

from __future__ import annotations

import grpc
import pytest

from sandboxd.config import parse_config
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

CONFIG = """
profiles:
  - display_name: default
    spec:
      resource_ceilings: {cpu: "4", memory: 8Gi}
      network:
        egress: {default: internet, modes: {internet: {type: internet}, none: {type: none}}}
        ingress: {default: internal, modes: {public: {type: public}, internal: {type: internal}}}
  - display_name: locked-down
    spec:
      resource_ceilings: {cpu: "2", memory: 2Gi}
      network:
        egress: {default: none, modes: {none: {type: none}}}
  - display_name: gpu
    spec:
      gpu_types: [H100]
      resource_ceilings: {gpu: 4}
runners:
  - runner_id: gpu-box
    bindings: [{profile: gpu, is_default: true}, {profile: default}]
default_bindings:
  - {profile: default, is_default: true}
  - {profile: locked-down}
"""

GIB = 1024**3


def registry_with(*runners: tuple[str, int, int, list[str]]) -> RunnerRegistry:
    registry = RunnerRegistry(parse_config(CONFIG, "test.yaml"))
    for runner_id, cpu, memory, gpus in runners:
        registry.register(
            runner_pb2.Register(
                runner_id=runner_id,
                capabilities=runner_pb2.Capabilities(
                    cpu_millicores=cpu,
                    memory_bytes=memory,
                    gpu_count=len(gpus),
                    gpu_types=sorted(set(gpus)),
                    architectures=["amd64"],
                    images=["python:3.11", "busybox"],
                ),
            )
        )
    return registry


def start(**fields: object) -> g.StartSandboxRequest:
    fields.setdefault("command", "sleep")
    return g.StartSandboxRequest(**fields)  # type: ignore[arg-type]


def rejection(registry: RunnerRegistry, request: g.StartSandboxRequest) -> ApiError:
    with pytest.raises(ApiError) as caught:
        place(registry, parse_start_request(request))
    return caught.value


def test_least_loaded_runner_wins() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []), ("b", 8000, 16 * GIB, []))
    registry.reserve("a", "sb-1", runner_pb2.Reservation(cpu_millicores=500))
    chosen = place(registry, parse_start_request(start()))
    assert chosen.runner.runner_id == "b"
    assert chosen.profile.profile_name == "default"
    assert chosen.egress_mode == "internet"
    assert chosen.image == "python:3.11"
    assert chosen.cpu_limit == 1000  # the scheduler's default when the profile gives none


def test_resources_come_from_limits_and_requests() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    chosen = place(
        registry,
        parse_start_request(
            start(
                resource_limits=g.ResourceRequest(cpu="2", memory="1Gi"),
                resource_requests=g.ResourceRequest(cpu="500m", memory="256Mi"),
            )
        ),
    )
    assert (chosen.cpu_limit, chosen.cpu_request) == (2000, 500)
    assert (chosen.memory_limit, chosen.memory_request) == (GIB, 256 * 1024**2)


def test_named_profile_without_the_egress_mode_is_a_profile_mismatch() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    error = rejection(
        registry,
        start(profile_names=["locked-down"], network=g.NetworkOptions(egress_mode="internet")),
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "CWSANDBOX_PROFILE_MISMATCH"
    assert [v.field for v in error.violations] == ["network.egress_mode"]
    assert "runner a, profile locked-down" in error.violations[0].description
    assert error.metadata["a/locked-down"] == "network.egress_mode"


def test_profile_ids_accept_names() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    chosen = place(registry, parse_start_request(start(profile_ids=["locked-down"])))
    assert chosen.profile.profile_name == "locked-down"
    assert chosen.egress_mode == "none"


def test_over_ceiling_reports_every_runner() -> None:
    registry = registry_with(("a", 16000, 64 * GIB, []), ("b", 16000, 64 * GIB, []))
    error = rejection(registry, start(resource_limits=g.ResourceRequest(cpu="8")))
    assert error.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
    assert [(v.field, v.description.split(":")[0]) for v in error.violations] == [
        ("resource_limits.cpu", "runner a, profile default"),
        ("resource_limits.cpu", "runner b, profile default"),
    ]
    assert error.metadata["runners_considered"] == "2"


def test_live_capacity_counts_reservations() -> None:
    registry = registry_with(("a", 4000, 4 * GIB, []))
    registry.reserve("a", "sb-1", runner_pb2.Reservation(memory_bytes=3 * GIB))
    error = rejection(registry, start(resource_limits=g.ResourceRequest(memory="2Gi")))
    assert [v.field for v in error.violations] == ["resource_requests.memory"]
    registry.release("a", "sb-1")
    assert place(
        registry, parse_start_request(start(resource_limits=g.ResourceRequest(memory="2Gi")))
    )


def test_gpu_requests() -> None:
    registry = registry_with(
        ("a", 8000, 16 * GIB, []), ("gpu-box", 8000, 16 * GIB, ["H100", "H100"])
    )
    gpu = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="H100"))
    chosen = place(registry, parse_start_request(start(resource_limits=gpu)))
    assert chosen.runner.runner_id == "gpu-box" and chosen.gpu_type == "H100"
    wrong = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="A100"))
    error = rejection(registry, start(resource_limits=wrong))
    assert [v.description.split(":")[0] for v in error.violations] == [
        "runner a, profile default",
        "runner gpu-box, profile gpu",
    ]
    assert {v.field for v in error.violations} == {"resource_limits.gpu.gpu_type"}
    untyped = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1))
    error = rejection(registry, start(resource_limits=untyped, runner_ids=["a"]))
    assert [v.field for v in error.violations] == ["resource_limits.gpu"]
    too_many = g.ResourceRequest(gpu=g.GpuRequest(gpu_count=3, gpu_type="H100"))
    error = rejection(registry, start(resource_limits=too_many))
    assert "resource_requests.gpu" in {v.field for v in error.violations}


def test_ingress_needs_a_profile_that_offers_it() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    network = g.NetworkOptions(ingress_mode="public", exposed_ports=[8080])
    chosen = place(registry, parse_start_request(start(network=network)))
    assert (chosen.ingress_mode, chosen.ingress_type) == ("public", "public")
    error = rejection(registry, start(network=network, profile_names=["locked-down"]))
    assert [v.field for v in error.violations] == ["network.ingress_mode"]


def test_unhealthy_runner_is_explained() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    state = registry.get("a")
    assert state is not None and state.connection_id is not None
    registry.disconnect("a", state.connection_id)
    error = rejection(registry, start())
    assert error.violations[0].description == "runner a: unhealthy"
    assert error.metadata["a"] == "unhealthy"


def test_unknown_names_are_not_found() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    error = rejection(registry, start(profile_names=["ghost"]))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CWSANDBOX_PROFILE_NOT_FOUND")
    error = rejection(registry, start(runner_ids=["ghost"]))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CWSANDBOX_RUNNER_NOT_FOUND")


def test_unknown_image_names_the_command_that_provides_it() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []))
    error = rejection(registry, start(container_image="python:3.12"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "python:3.12" in error.message
    assert "sandboxd images build python:3.12" in error.message
    assert [v.field for v in error.violations] == ["container_image"]


def test_runner_ids_restrict_candidates() -> None:
    registry = registry_with(("a", 8000, 16 * GIB, []), ("b", 8000, 16 * GIB, []))
    registry.reserve("b", "sb-1", runner_pb2.Reservation(cpu_millicores=100))
    assert place(registry, parse_start_request(start(runner_ids=["b"]))).runner.runner_id == "b"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"command": ""}, "command"),
        ({"resource_limits": g.ResourceRequest(cpu="lots")}, "resource_limits.cpu"),
        ({"resource_limits": g.ResourceRequest(memory="-1Gi")}, "resource_limits.memory"),
        ({"resource_limits": g.ResourceRequest(cpu="0")}, "resource_limits.cpu"),
        (
            {
                "resource_limits": g.ResourceRequest(cpu="1"),
                "resource_requests": g.ResourceRequest(cpu="2"),
            },
            "resource_requests.cpu",
        ),
        ({"network": g.NetworkOptions(exposed_ports=[70000])}, "network.exposed_ports"),
        ({"max_lifetime_seconds": -5}, "max_lifetime_seconds"),
        ({"environment_variables": {"A=B": "x"}}, "environment_variables"),
        ({"tags": ["ok", " "]}, "tags"),
        ({"profile_names": [""]}, "profile_names"),
        (
            {"mounted_files": [g.MountedFile(mount_path="relative", file_content=b"")]},
            "mounted_files[0].mount_path",
        ),
        ({"container_image": " python:3.11"}, "container_image"),
    ],
)
def test_malformed_start_requests_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_start_request(start(**fields))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.violations] == [field]


def test_unsupported_features_are_unimplemented() -> None:
    with pytest.raises(ApiError) as caught:
        parse_start_request(start(s3_mount=g.S3Mount(bucket="b", directory="d", mount_path="/m")))
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.reason == "CWSANDBOX_NOT_IMPLEMENTED"
