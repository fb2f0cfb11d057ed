"""Discovery calls against the stand-in server: requests sent, filters, paging, errors.

The stand-in (``client_standin``) is a fixed-data DiscoveryService for client-side unit
tests; real-server end-to-end tests live in ``tests/e2e``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import cwsandbox
from cwsandbox import (
    CWSandboxAuthenticationError,
    CWSandboxError,
    DiscoveryError,
    ProfileNotFoundError,
    RunnerNotFoundError,
    _config,
)
from sandboxd_protocol.v1beta2 import discovery_pb2 as pb
from tests.unit.client.client_standin import StandIn, error_info, status_with_details

GiB = 1024**3


def ids(items: list[Any]) -> list[str]:
    return [getattr(i, "runner_id", "") + "/" + getattr(i, "profile_name", "") for i in items]


def runner_ids(runners: list[cwsandbox.Runner]) -> list[str]:
    return [r.runner_id for r in runners]


# --- profiles -----------------------------------------------------------------------------


def test_list_profiles_pages_through_everything(standin: StandIn) -> None:
    profiles = cwsandbox.list_profiles()
    assert ids(profiles) == ["r1/default", "r1/gpu", "r2/default", "r3/gpu", "r4/default"]
    requests = standin.servicer.requests("ListProfiles")
    assert [r.page_token for r in requests] == ["", "2", "4"]
    assert all(r.page_size == 100 for r in requests)
    assert all(not r.exclude_shared for r in requests)


def test_list_profiles_server_side_filters_resent_on_every_page(standin: StandIn) -> None:
    standin.servicer.page_size = 1
    profiles = cwsandbox.list_profiles(runner_id="r1", architecture="amd64")
    assert ids(profiles) == ["r1/default", "r1/gpu"]
    requests = standin.servicer.requests("ListProfiles")
    assert len(requests) == 2
    assert all((r.runner_id, r.architecture, r.gpu_type) == ("r1", "amd64", "") for r in requests)
    assert ids(cwsandbox.list_profiles(gpu_type="h100")) == ["r3/gpu"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"egress_mode": "internet"}, ["r1/default", "r2/default"]),
        ({"ingress_mode": "public"}, ["r1/default", "r3/gpu"]),
        ({"service_exposure_mode": "private"}, ["r3/gpu"]),
        ({"egress_mode": "internet", "ingress_mode": "public"}, ["r1/default"]),
        ({"ingress_mode": "public", "service_exposure_mode": "public"}, ["r1/default", "r3/gpu"]),
        ({"egress_mode": "Internet"}, []),  # exact match only
        ({"runner_id": "r3", "ingress_mode": "public", "egress_mode": "none"}, ["r3/gpu"]),
    ],
)
def test_list_profiles_mode_filters(
    standin: StandIn, kwargs: dict[str, str], expected: list[str]
) -> None:
    assert ids(cwsandbox.list_profiles(**kwargs)) == expected


def test_conflicting_ingress_aliases(standin: StandIn) -> None:
    with pytest.raises(ValueError, match="same filter"):
        cwsandbox.list_profiles(ingress_mode="public", service_exposure_mode="private")
    with pytest.raises(ValueError, match="same filter"):
        cwsandbox.list_runners(ingress_mode="public", service_exposure_mode="private")
    assert standin.servicer.calls == []


def test_get_profile(standin: StandIn) -> None:
    profile = cwsandbox.get_profile("gpu", runner_id="r3")
    assert (profile.profile_name, profile.runner_id) == ("gpu", "r3")
    assert [m.name for m in profile.ingress_modes] == ["public", "private"]
    (request,) = standin.servicer.requests("GetProfile")
    assert (request.profile_name, request.runner_id) == ("gpu", "r3")
    assert cwsandbox.get_profile("default").runner_id == "r1"


def test_get_profile_not_found(standin: StandIn) -> None:
    with pytest.raises(ProfileNotFoundError) as info:
        cwsandbox.get_profile("gpu", runner_id="r2")
    assert (info.value.profile_name, info.value.runner_id) == ("gpu", "r2")
    with pytest.raises(ProfileNotFoundError) as info:
        cwsandbox.get_profile("missing")
    assert info.value.runner_id is None


# --- runners ------------------------------------------------------------------------------


def test_list_runners_basic_view(standin: StandIn) -> None:
    runners = cwsandbox.list_runners()
    assert runner_ids(runners) == ["r1", "r2", "r3", "r4"]
    assert all(r.resources is None for r in runners)
    assert not runners[1].healthy  # unhealthy runners are listed too
    requests = standin.servicer.requests("ListAvailableRunners")
    assert {r.view for r in requests} == {pb.RUNNER_VIEW_BASIC}
    assert all(r.page_size == 100 and not r.healthy_only and not r.exclude_shared for r in requests)
    assert standin.servicer.requests("ListProfiles") == []


def test_list_runners_include_resources(standin: StandIn) -> None:
    runners = cwsandbox.list_runners(include_resources=True)
    assert [r.resources is not None for r in runners] == [True, True, True, False]
    assert runners[2].resources is not None
    assert runners[2].resources.available_gpu_count == 2
    assert {r.view for r in standin.servicer.requests("ListAvailableRunners")} == {
        pb.RUNNER_VIEW_FULL
    }


def test_list_runners_server_side_filters(standin: StandIn) -> None:
    standin.servicer.page_size = 1
    runners = cwsandbox.list_runners(runner_group_id="g1", architecture="amd64")
    assert runner_ids(runners) == ["r1", "r3"]
    requests = standin.servicer.requests("ListAvailableRunners")
    assert [r.page_token for r in requests] == ["", "1"]
    assert all((r.runner_group_id, r.architecture) == ("g1", "amd64") for r in requests)
    assert runner_ids(cwsandbox.list_runners(profile_name="gpu")) == ["r1", "r3"]
    assert runner_ids(cwsandbox.list_runners(gpu_type="h100")) == ["r3"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"min_available_cpu_millicores": 2000}, ["r1", "r3"]),
        ({"min_available_cpu_millicores": 6000}, ["r1", "r3"]),
        ({"min_available_cpu_millicores": 6001}, ["r3"]),
        (
            {"min_available_memory_bytes": 4 * GiB, "min_available_cpu_millicores": 2000},
            ["r1", "r3"],
        ),
        ({"min_available_gpu_count": 1}, ["r3"]),
        ({"min_available_gpu_count": 0}, ["r1", "r2", "r3"]),  # r4 has no resources: dropped
        ({"min_available_memory_bytes": 65 * GiB}, []),
    ],
)
def test_capacity_filters_are_client_side_and_force_full_view(
    standin: StandIn, kwargs: dict[str, int], expected: list[str]
) -> None:
    assert runner_ids(cwsandbox.list_runners(**kwargs)) == expected
    for request in standin.servicer.requests("ListAvailableRunners"):
        assert request.view == pb.RUNNER_VIEW_FULL


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"egress_mode": "internet"}, ["r1", "r2"]),
        ({"ingress_mode": "public"}, ["r1", "r3"]),
        ({"service_exposure_mode": "private"}, ["r3"]),
        ({"ingress_mode": "public", "egress_mode": "internet"}, ["r1"]),
        ({"egress_mode": "internet", "runner_group_id": "g2"}, ["r2"]),
        ({"egress_mode": "none", "min_available_gpu_count": 1}, ["r3"]),
        ({"egress_mode": "carrier-pigeon"}, []),
    ],
)
def test_runner_mode_filters_use_an_unfiltered_profile_listing(
    standin: StandIn, kwargs: dict[str, Any], expected: list[str]
) -> None:
    standin.servicer.page_size = 1
    assert runner_ids(cwsandbox.list_runners(**kwargs)) == expected
    profile_requests = standin.servicer.requests("ListProfiles")
    assert len(profile_requests) == len(standin.servicer.profiles)  # all pages, one per profile
    for request in profile_requests:
        assert (request.runner_id, request.gpu_type, request.architecture) == ("", "", "")
        assert request.page_size == 100


def test_get_runner_is_always_full(standin: StandIn) -> None:
    runner = cwsandbox.get_runner("r3")
    assert runner.runner_id == "r3"
    assert runner.resources is not None
    assert runner.supports_privileged
    (request,) = standin.servicer.requests("GetAvailableRunner")
    assert (request.runner_id, request.view) == ("r3", pb.RUNNER_VIEW_FULL)


def test_get_runner_not_found(standin: StandIn) -> None:
    with pytest.raises(RunnerNotFoundError) as info:
        cwsandbox.get_runner("runner-abc-123")
    assert info.value.runner_id == "runner-abc-123"
    assert "runner-abc-123" in str(info.value)


# --- argument validation -------------------------------------------------------------------

BLANK_CALLS: list[Callable[[], object]] = [
    lambda: cwsandbox.get_runner(""),
    lambda: cwsandbox.get_runner("   "),
    lambda: cwsandbox.get_profile(""),
    lambda: cwsandbox.get_profile("p", runner_id=" "),
    lambda: cwsandbox.list_profiles(runner_id=""),
    lambda: cwsandbox.list_profiles(egress_mode=" "),
    lambda: cwsandbox.list_runners(runner_group_id=""),
    lambda: cwsandbox.list_runners(profile_name="  "),
    lambda: cwsandbox.list_runners(ingress_mode=""),
    lambda: cwsandbox.list_runners(min_available_cpu_millicores=-1),
]


@pytest.mark.parametrize("call", BLANK_CALLS)
def test_blank_or_negative_arguments_are_refused_locally(
    standin: StandIn, call: Callable[[], object]
) -> None:
    with pytest.raises(ValueError, match="must not be"):
        call()
    assert standin.servicer.calls == []


# --- pagination safety -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call", [cwsandbox.list_runners, cwsandbox.list_profiles], ids=["runners", "profiles"]
)
def test_pagination_loop_detected(standin: StandIn, call: Callable[[], object]) -> None:
    standin.servicer.loop_tokens = True
    with pytest.raises(CWSandboxError, match="pagination loop detected") as info:
        call()
    assert isinstance(info.value, DiscoveryError)
    assert len(standin.servicer.calls) == 2


def test_more_than_100_pages_is_an_error(standin: StandIn) -> None:
    standin.servicer.endless = True
    with pytest.raises(DiscoveryError, match="100 pages"):
        cwsandbox.list_runners()
    assert len(standin.servicer.calls) == 100


# --- credentials ----------------------------------------------------------------------------


def test_no_authorization_header_without_key(standin: StandIn) -> None:
    cwsandbox.list_runners()
    cwsandbox.get_runner("r1")
    assert all("authorization" not in c.metadata for c in standin.servicer.calls)


def test_authorization_header_on_every_rpc(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_API_KEY", "secret-1")
    cwsandbox.list_runners(egress_mode="internet")
    monkeypatch.setenv("CWSANDBOX_API_KEY", "secret-2")
    cwsandbox.get_profile("gpu")
    headers = [c.metadata.get("authorization") for c in standin.servicer.calls]
    assert headers[:-1] == ["Bearer secret-1"] * (len(headers) - 1)
    assert headers[-1] == "Bearer secret-2"
    monkeypatch.setenv("CWSANDBOX_API_KEY", "")
    cwsandbox.get_runner("r1")
    assert "authorization" not in standin.servicer.calls[-1].metadata


# --- deadlines and connectivity ---------------------------------------------------------------


def test_default_deadline_is_30_seconds(standin: StandIn) -> None:
    cwsandbox.get_runner("r1")
    remaining = standin.servicer.calls[0].time_remaining
    assert remaining is not None
    assert 25 < remaining <= 30.2  # gRPC rounds the timeout it sends up (to ~100 ms)


def test_one_deadline_is_shared_by_all_pages(standin: StandIn) -> None:
    standin.servicer.page_size = 1
    standin.servicer.delay = 0.3
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        cwsandbox.list_runners(timeout=1.0)
    assert time.monotonic() - started < 3  # room for a loaded machine; pages never end
    assert standin.url in str(info.value)
    # Each page got only what was left of the one 1-second budget, not a fresh timeout.
    remaining = [c.time_remaining or 0.0 for c in standin.servicer.calls]
    assert all(r <= 1.2 for r in remaining)  # gRPC rounds the timeout it sends up
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-1] < 0.5


def test_timeout_module_constant(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "DISCOVERY_TIMEOUT_SECONDS", 0.3)
    standin.servicer.delay = 3.0
    started = time.monotonic()
    with pytest.raises(DiscoveryError, match="timed out"):
        cwsandbox.get_runner("r1")
    assert time.monotonic() - started < 2.0  # the 0.3 s constant, not the 3 s answer


@pytest.mark.parametrize(
    "call",
    [
        cwsandbox.list_runners,
        cwsandbox.list_profiles,
        lambda: cwsandbox.get_runner("r1"),
        lambda: cwsandbox.get_profile("default"),
    ],
    ids=["list_runners", "list_profiles", "get_runner", "get_profile"],
)
def test_unreachable_server_names_the_url(
    closed_port_url: str, monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]
) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", closed_port_url)
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        call()
    assert time.monotonic() - started < _config.DISCOVERY_TIMEOUT_SECONDS
    assert f"cannot reach sandboxd control plane at {closed_port_url}" in str(info.value)
    assert not isinstance(info.value, grpc.RpcError)
    assert info.value.__cause__ is None  # no grpc error chained into the traceback


def test_explicit_base_url_overrides_env(
    standin: StandIn, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", closed_port_url)
    assert runner_ids(cwsandbox.list_runners(base_url=standin.url)) == ["r1", "r2", "r3", "r4"]


# --- server errors ----------------------------------------------------------------------------

CALLS: dict[str, Callable[[], object]] = {
    "ListAvailableRunners": cwsandbox.list_runners,
    "ListProfiles": cwsandbox.list_profiles,
    "GetAvailableRunner": lambda: cwsandbox.get_runner("r1"),
    "GetProfile": lambda: cwsandbox.get_profile("default"),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, CWSandboxAuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, CWSandboxAuthenticationError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, DiscoveryError),
        (grpc.StatusCode.INTERNAL, DiscoveryError),
        (grpc.StatusCode.UNAVAILABLE, DiscoveryError),
    ],
)
def test_server_errors_never_leak_grpc(
    standin: StandIn, method: str, code: grpc.StatusCode, expected: type
) -> None:
    blob = status_with_details(code, "nope", error_info("CWSANDBOX_TEST", k="v"))
    standin.servicer.failures[method] = (code, "nope", blob)
    with pytest.raises(expected) as info:
        CALLS[method]()
    assert not isinstance(info.value, grpc.RpcError)
    assert (info.value.reason, info.value.metadata) == ("CWSANDBOX_TEST", {"k": "v"})


def test_mode_filter_profile_listing_errors_are_translated(standin: StandIn) -> None:
    standin.servicer.failures["ListProfiles"] = (grpc.StatusCode.INTERNAL, "db down", None)
    with pytest.raises(DiscoveryError, match="list_runners failed \\(INTERNAL\\): db down"):
        cwsandbox.list_runners(egress_mode="internet")
