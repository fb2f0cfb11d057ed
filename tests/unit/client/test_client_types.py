"""Discovery result types: construction like the official client, repr, from_proto."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from cwsandbox import EgressMode, Profile, Runner, RunnerResources, ServiceExposureMode, WarmPool
from sandboxd_protocol.v1beta2 import discovery_pb2 as pb
from tests.unit.client.client_standin import PROFILES, RUNNERS


def _runner(**overrides: object) -> Runner:
    fields: dict[str, object] = {
        "runner_id": "r1",
        "runner_group_id": "g",
        "tags": (),
        "healthy": True,
        "profile_names": ("default", "x"),
        "connected_at": datetime(2024, 1, 1, tzinfo=UTC),
        "max_cpu_millicores": 8000,
        "max_memory_bytes": 16 * 1024**3,
        "max_gpu_count": 0,
        "supported_gpu_types": (),
        "supported_architectures": (),
        "supports_privileged": False,
        "available_storage_classes": (),
    }
    fields.update(overrides)
    return Runner(**fields)  # type: ignore[arg-type]


def test_runner_repr_matches_official_format() -> None:
    expected = (
        "Runner(runner_id='r1', healthy=True, cpu=8.0 vCPU, memory=16.0 GiB, gpus=0, "
        "profiles=['default', 'x'])"
    )
    assert repr(_runner()) == expected
    assert str(_runner()) == expected


def test_runner_repr_small_values() -> None:
    runner = _runner(
        runner_id="r2",
        healthy=False,
        max_cpu_millicores=1500,
        max_memory_bytes=1536,
        max_gpu_count=2,
        profile_names=(),
    )
    assert repr(runner) == (
        "Runner(runner_id='r2', healthy=False, cpu=1.5 vCPU, memory=1.5 KiB, gpus=2, profiles=[])"
    )


@pytest.mark.parametrize("cls", [Profile, Runner, RunnerResources, ServiceExposureMode, EgressMode])
def test_types_are_frozen_keyword_only_dataclasses(cls: type) -> None:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    assert all(f.kw_only for f in dataclasses.fields(cls))
    with pytest.raises(TypeError):
        cls("positional")


def test_field_order_matches_official_client() -> None:
    assert [f.name for f in dataclasses.fields(Runner)] == [
        "runner_id",
        "runner_group_id",
        "tags",
        "healthy",
        "profile_names",
        "connected_at",
        "max_cpu_millicores",
        "max_memory_bytes",
        "max_gpu_count",
        "supported_gpu_types",
        "supported_architectures",
        "supports_privileged",
        "available_storage_classes",
        "resources",
    ]
    assert [f.name for f in dataclasses.fields(Profile)] == [
        "profile_name",
        "runner_id",
        "supported_gpu_types",
        "supported_architectures",
        "service_exposure_modes",
        "egress_modes",
        "warm_pool",
    ]
    assert _runner().resources is None


def test_runner_from_proto_full() -> None:
    runner = Runner.from_proto(RUNNERS[0])
    assert runner.runner_id == "r1"
    assert runner.runner_group_id == "g1"
    assert runner.tags == ("local",)
    assert runner.profile_names == ("default", "gpu")
    assert runner.connected_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert runner.max_cpu_millicores == 8000
    assert runner.supported_architectures == ("amd64",)
    assert runner.available_storage_classes == ("local",)
    assert runner.resources == RunnerResources(
        available_cpu_millicores=6000,
        available_memory_bytes=8 * 1024**3,
        available_gpu_count=0,
        running_sandboxes=2,
    )


def test_runner_from_proto_defaults() -> None:
    runner = Runner.from_proto(pb.AvailableRunner(runner_id="bare"))
    assert runner.connected_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert runner.connected_at.tzinfo is not None
    assert runner.max_cpu_millicores == 0
    assert runner.supported_gpu_types == ()
    assert runner.supports_privileged is False
    assert runner.resources is None


def test_runner_from_proto_keeps_present_but_zero_resources() -> None:
    msg = pb.AvailableRunner(runner_id="z", resources=pb.RunnerResourceSummary())
    assert Runner.from_proto(msg).resources == RunnerResources(
        available_cpu_millicores=0,
        available_memory_bytes=0,
        available_gpu_count=0,
        running_sandboxes=0,
    )


def test_profile_from_proto_and_ingress_alias() -> None:
    profile = Profile.from_proto(PROFILES[3])
    assert profile.profile_name == "gpu"
    assert profile.runner_id == "r3"
    assert profile.supported_gpu_types == ("h100",)
    assert profile.service_exposure_modes == (
        ServiceExposureMode(name="public"),
        ServiceExposureMode(name="private"),
    )
    assert profile.ingress_modes is profile.service_exposure_modes
    assert profile.egress_modes == (EgressMode(name="none"),)
    assert hash(profile) == hash(Profile.from_proto(PROFILES[3]))


def test_profile_warm_pool_is_a_sandboxd_extension() -> None:
    assert Profile.from_proto(PROFILES[3]).warm_pool is None  # other servers never send it
    message = pb.ProfileSummary(profile_name="default", runner_id="r1")
    message.sandboxd_warm_pool.CopyFrom(pb.SandboxdWarmPool(size=4, ready=3, claims=12))
    assert Profile.from_proto(message).warm_pool == WarmPool(size=4, ready=3, claims=12, error="")
    # a client without the extension (the official one) skips field 1001 unharmed
    plain = pb.ProfileSummary.FromString(message.SerializeToString())
    assert plain.profile_name == "default"
