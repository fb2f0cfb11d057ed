"""Every discovery filter, view and pagination rule against a real multi-runner cluster."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.v1beta2 import discovery_pb2
from tests.integration.conftest import Cluster

FULL = discovery_pb2.RUNNER_VIEW_FULL
BASIC = discovery_pb2.RUNNER_VIEW_BASIC


def ids(runners: list[discovery_pb2.AvailableRunner]) -> list[str]:
    return [r.runner_id for r in runners]


def error_info(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """ErrorInfo and BadRequest field names from the rich status trailer."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return info, fields


def test_lists_every_runner_in_id_order(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        runners = client.all_runners()
    assert ids(runners) == ["alpha", "bravo", "charlie", "delta"]
    alpha = runners[0]
    assert alpha.runner_group_id == "east"
    assert list(alpha.tags) == ["ssd"]
    assert alpha.healthy
    assert list(alpha.profile_names) == ["default", "locked-down"]
    assert alpha.capabilities.max_cpu_millicores > 0
    assert alpha.capabilities.max_memory_bytes > 0
    assert list(alpha.capabilities.supported_architectures) in (["amd64"], ["arm64"])
    assert alpha.connected_at.seconds > 0


def test_basic_view_omits_and_full_view_carries_resources(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        basic = client.list_runners(view=BASIC).runners
        unspecified = client.list_runners().runners
        full = client.list_runners(view=FULL).runners
    assert not any(r.HasField("resources") for r in [*basic, *unspecified])
    assert all(r.HasField("resources") for r in full)
    alpha = next(r for r in full if r.runner_id == "alpha")
    # No sandboxes yet: everything the host has is available.
    assert alpha.resources.available_cpu_millicores == alpha.capabilities.max_cpu_millicores
    assert alpha.resources.available_memory_bytes == alpha.capabilities.max_memory_bytes
    assert alpha.resources.running_sandboxes == 0


def test_config_group_overrides_the_registered_group(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        assert ids(client.all_runners(runner_group_id="gpu-pool")) == ["bravo"]
        assert ids(client.all_runners(runner_group_id="east")) == ["alpha", "charlie"]
        assert ids(client.all_runners(runner_group_id="west")) == ["delta"]
        assert client.all_runners(runner_group_id="nowhere") == []


def test_filter_by_profile_name_uses_binding_aliases(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        assert ids(client.all_runners(profile_name="locked-down")) == ["alpha", "charlie"]
        assert ids(client.all_runners(profile_name="default-large")) == ["bravo"]
        assert ids(client.all_runners(profile_name="gpu")) == ["bravo"]
        assert client.all_runners(profile_name="no-such-profile") == []


def test_filter_by_gpu_type_and_architecture(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        gpu_runners = client.all_runners(gpu_type="H100", view=FULL)
        assert ids(gpu_runners) == ["bravo"]
        assert gpu_runners[0].capabilities.max_gpu_count == 2
        assert list(gpu_runners[0].capabilities.supported_gpu_types) == ["H100"]
        assert gpu_runners[0].resources.available_gpu_count == 2
        assert ids(client.all_runners(gpu_type="h100")) == ["bravo"]  # case-insensitive
        assert client.all_runners(gpu_type="A100") == []
        arch = client.all_runners()[0].capabilities.supported_architectures[0]
        assert len(client.all_runners(architecture=arch)) == 4
        other = "arm64" if arch == "amd64" else "amd64"
        assert client.all_runners(architecture=other) == []


def test_filters_combine_with_and(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        assert ids(client.all_runners(runner_group_id="east", profile_name="default")) == ["alpha"]
        assert client.all_runners(runner_group_id="east", gpu_type="H100") == []


def test_shared_runner_hides_capacity_and_can_be_excluded(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        charlie = client.get_runner("charlie")
        assert charlie.is_shared
        assert charlie.capabilities.max_cpu_millicores == 0
        assert charlie.HasField("resources")
        assert charlie.resources.available_cpu_millicores == 0
        assert "charlie" not in ids(client.all_runners(exclude_shared=True))
        assert "charlie" not in [p.runner_id for p in client.all_profiles(exclude_shared=True)]


def test_healthy_only_keeps_connected_runners(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        assert ids(client.all_runners(healthy_only=True)) == ["alpha", "bravo", "charlie", "delta"]


@pytest.mark.parametrize("page_size", [1, 2, 3])
def test_pagination_visits_every_runner_once(cluster: Cluster, page_size: int) -> None:
    with cluster.control_plane.discovery() as client:
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = client.list_runners(page_size=page_size, page_token=token)
            assert len(page.runners) <= page_size
            seen += ids(list(page.runners))
            pages += 1
            token = page.next_page_token
            if not token:
                break
    assert seen == ["alpha", "bravo", "charlie", "delta"]
    assert pages == -(-4 // page_size)  # no trailing empty page


def test_pagination_keeps_filters(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        first = client.list_runners(page_size=1, runner_group_id="east")
        assert ids(list(first.runners)) == ["alpha"]
        second = client.list_runners(
            page_size=1, runner_group_id="east", page_token=first.next_page_token
        )
        assert ids(list(second.runners)) == ["charlie"]
        assert second.next_page_token == ""
        with pytest.raises(grpc.RpcError) as caught:
            client.list_runners(
                page_size=1, runner_group_id="west", page_token=first.next_page_token
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in caught.value.details()


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_token": "eyJ4IjoxfQ"}, "page_token"),  # valid base64 JSON, wrong shape
        ({"view": 7}, "view"),
    ],
)
def test_bad_list_runner_arguments_name_the_field(
    cluster: Cluster, fields: dict[str, object], bad_field: str
) -> None:
    with cluster.control_plane.discovery() as client, pytest.raises(grpc.RpcError) as caught:
        client.list_runners(**fields)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field in error.details()
    info, violations = error_info(error)
    assert info.domain == "cwsandbox.com"
    assert violations == [bad_field]
    # The cluster is untouched by bad requests.
    with cluster.control_plane.discovery() as client:
        assert len(client.all_runners()) == 4


def test_get_runner_is_full_and_not_found_is_structured(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        bravo = client.get_runner("bravo")
        assert bravo.HasField("resources")
        assert bravo.runner_group_id == "gpu-pool"
        with pytest.raises(grpc.RpcError) as caught:
            client.get_runner("runner-abc-123")
        with pytest.raises(grpc.RpcError) as empty:
            client.get_runner("")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = error_info(caught.value)
    assert (info.domain, info.reason) == ("cwsandbox.com", "CWSANDBOX_RUNNER_NOT_FOUND")
    assert info.metadata["runner_id"] == "runner-abc-123"
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runner_id" in empty.value.details()


def test_profiles_one_entry_per_runner_and_binding(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        profiles = client.all_profiles()
    pairs = [(p.runner_id, p.profile_name) for p in profiles]
    assert pairs == [
        ("alpha", "default"),
        ("alpha", "locked-down"),
        ("bravo", "default-large"),
        ("bravo", "gpu"),
        ("charlie", "locked-down"),
    ]
    default = profiles[0]
    assert [m.name for m in default.egress_modes] == ["internet", "none"]
    assert [m.name for m in default.service_exposure_modes] == ["public", "internal"]
    gpu = profiles[3]
    assert [m.name for m in gpu.egress_modes] == ["github"]
    assert list(gpu.supported_gpu_types) == ["H100"]  # A100 is not on this host
    assert list(profiles[2].service_exposure_modes)  # overrides keep the base network


def test_profile_filters_and_pagination(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        # A profile that names no GPU types offers whatever GPUs its runner has.
        assert [(p.runner_id, p.profile_name) for p in client.all_profiles(gpu_type="H100")] == [
            ("bravo", "default-large"),
            ("bravo", "gpu"),
        ]
        assert client.all_profiles(gpu_type="A100") == []
        assert [p.profile_name for p in client.all_profiles(runner_id="alpha")] == [
            "default",
            "locked-down",
        ]
        assert client.all_profiles(runner_id="nobody") == []
        arch = client.all_profiles()[0].supported_architectures[0]
        assert len(client.all_profiles(architecture=arch)) == 5
        seen = []
        token = ""
        while True:
            page = client.list_profiles(page_size=2, page_token=token)
            seen += [(p.runner_id, p.profile_name) for p in page.profiles]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == 5 and len(set(seen)) == 5
        with pytest.raises(grpc.RpcError) as caught:
            client.list_profiles(page_size=-5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in caught.value.details()


def test_get_profile(cluster: Cluster) -> None:
    with cluster.control_plane.discovery() as client:
        assert client.get_profile("gpu").runner_id == "bravo"
        assert client.get_profile("locked-down", runner_id="charlie").runner_id == "charlie"
        assert client.get_profile("locked-down").runner_id in ("alpha", "charlie")
        for name, runner_id in [("missing", ""), ("gpu", "alpha"), ("default", "nobody")]:
            with pytest.raises(grpc.RpcError) as caught:
                client.get_profile(name, runner_id)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            info, _ = error_info(caught.value)
            assert info.reason == "CWSANDBOX_PROFILE_NOT_FOUND"
            assert info.metadata["profile_name"] == name
        with pytest.raises(grpc.RpcError) as blank:
            client.get_profile("  ")
    assert blank.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "profile_name" in blank.value.details()
