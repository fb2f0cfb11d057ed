"""Start requests that no runner can host, refused over real gRPC with per-runner reasons."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc
from tests.integration.conftest import Cluster


def start(cluster: Cluster, **fields: object) -> grpc.RpcError:
    channel = cluster.control_plane.channel()
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    fields.setdefault("command", "sleep")
    fields.setdefault("args", ["1"])
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Start(g.StartSandboxRequest(**fields), timeout=10)  # type: ignore[arg-type]
        return caught.value
    finally:
        channel.close()


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return info, violations


def test_named_profile_mismatch_lists_each_runner(cluster: Cluster) -> None:
    error = start(
        cluster, profile_names=["locked-down"], network=g.NetworkOptions(egress_mode="internet")
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, violations = details(error)
    assert (info.domain, info.reason) == ("cwsandbox.com", "CWSANDBOX_PROFILE_MISMATCH")
    assert violations == [
        (
            "network.egress_mode",
            "runner alpha, profile locked-down: egress mode 'internet' not offered "
            "(offers: ['none'])",
        ),
        (
            "network.egress_mode",
            "runner charlie, profile locked-down: egress mode 'internet' not offered "
            "(offers: ['none'])",
        ),
    ]
    assert info.metadata["runners_considered"] == "2"


def test_no_suitable_runner_for_an_oversized_request(cluster: Cluster) -> None:
    error = start(cluster, resource_limits=g.ResourceRequest(memory="64Ti"))
    info, violations = details(error)
    assert info.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
    fields = {field for field, _ in violations}
    # delta has no profiles at all; the others fail on live capacity.
    assert "profile_names" in fields
    assert "resource_requests.memory" in fields
    assert any(d.startswith("runner delta: has no profile bound") for _, d in violations)


def test_gpu_type_only_on_the_gpu_runner(cluster: Cluster) -> None:
    error = start(
        cluster,
        resource_limits=g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="A100")),
        runner_ids=["bravo"],
    )
    info, violations = details(error)
    assert info.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
    assert violations == [
        (
            "resource_limits.gpu.gpu_type",
            "runner bravo, profile gpu: GPU type 'A100' not offered (offers: ['H100'])",
        )
    ]


def test_unknown_profile_and_runner_are_not_found(cluster: Cluster) -> None:
    error = start(cluster, profile_ids=["ghost"])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error)[0].reason == "CWSANDBOX_PROFILE_NOT_FOUND"
    error = start(cluster, runner_ids=["ghost"])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error)[0].reason == "CWSANDBOX_RUNNER_NOT_FOUND"


def test_malformed_start_is_invalid_argument_naming_the_field(cluster: Cluster) -> None:
    error = start(cluster, resource_limits=g.ResourceRequest(cpu="two"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resource_limits.cpu" in error.details()
    assert details(error)[1] == [
        ("resource_limits.cpu", "not a quantity: 'two' (examples: '500m', '2', '4Gi')")
    ]


def test_rejections_reserve_nothing(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        before = {r.runner_id: r.resources for r in client.all_runners(view=2)}
        start(cluster, resource_limits=g.ResourceRequest(memory="64Ti"))
        after = {r.runner_id: r.resources for r in client.all_runners(view=2)}
    assert before == after
    assert all(r.running_sandboxes == 0 for r in after.values())


def test_rejections_show_quantities_in_the_units_the_client_wrote(cluster: Cluster) -> None:
    """A user who asked for 64Ti reads "64Ti", not 70368744177664 bytes, in the refusal."""
    _, violations = details(start(cluster, resource_limits=g.ResourceRequest(memory="64Ti")))
    memory = [text for field, text in violations if field == "resource_requests.memory"]
    assert memory, violations
    assert all("64Ti of memory requested, " in text for text in memory), memory
    assert not any("bytes" in text or "70368744177664" in text for text in memory), memory

    error = start(
        cluster,
        resource_limits=g.ResourceRequest(cpu="16"),
        runner_ids=["bravo"],
        profile_names=["default-large"],
    )
    assert details(error)[1] == [
        (
            "resource_limits.cpu",
            "runner bravo, profile default-large: 16 CPU exceeds the ceiling of 8",
        )
    ]


def test_a_request_above_its_limit_names_both_quantities_as_written(cluster: Cluster) -> None:
    error = start(
        cluster,
        resource_limits=g.ResourceRequest(cpu="500m", memory="1G"),
        resource_requests=g.ResourceRequest(memory="2Gi"),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[1] == [
        ("resource_requests.memory", "must not be more than resource_limits (2Gi > 1G)")
    ]
