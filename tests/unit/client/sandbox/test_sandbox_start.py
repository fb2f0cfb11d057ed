"""``Sandbox.run`` / ``Sandbox(...)``: what the Start request carries (protocol §4.2).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import grpc
import pytest

from cwsandbox import (
    NetworkOptions,
    ProfileNotFoundError,
    ResourceOptions,
    RunnerNotFoundError,
    Sandbox,
    SandboxDefaults,
    SandboxNotFoundError,
    SandboxResourceExhaustedError,
    SandboxStatus,
    Secret,
)
from tests.unit.client.sandbox.gateway_standin import Gateway, failure

DEFAULT_ARGS = ["-c", 'trap "exit 0" TERM INT; sleep infinity & wait']


def only_start(gateway: Gateway) -> object:
    starts = gateway.servicer.requests("Start")
    assert len(starts) == 1
    return starts[0]


def test_run_defaults(gateway: Gateway) -> None:
    sb = Sandbox.run()
    req = only_start(gateway)
    assert req.command == "/bin/sh"
    assert list(req.args) == DEFAULT_ARGS
    assert req.container_image == "python:3.11"
    assert list(req.tags) == []
    assert not req.HasField("resources")
    assert not req.HasField("resource_limits")
    assert not req.HasField("network")
    assert req.max_lifetime_seconds == 0
    assert list(req.profile_ids) == [] and list(req.profile_names) == []
    # run() returns right after Start: no polling yet.
    assert gateway.servicer.requests("Get") == []
    assert sb.sandbox_id == "sb-1"
    assert sb.status is SandboxStatus.PENDING


def test_run_positional_command(gateway: Gateway) -> None:
    Sandbox.run("echo", "hi", "there")
    req = only_start(gateway)
    assert req.command == "echo"
    assert list(req.args) == ["hi", "there"]


def test_defaults_and_call_merge(gateway: Gateway) -> None:
    defaults = SandboxDefaults(
        tags=("d1", "d2"),
        profile_ids=("pd",),
        runner_ids=("r9",),
        environment_variables={"A": "1", "B": "0"},
        annotations={"x": "1"},
        resources={"memory": "1Gi"},
        network=NetworkOptions(egress_mode="none"),
        max_lifetime_seconds=120,
        container_image="img:1",
    )
    Sandbox.run(
        defaults=defaults,
        tags=["c1"],
        profile_ids=["p1"],
        environment_variables={"B": "2"},
        network=NetworkOptions(egress_mode="internet", ingress_mode="public", exposed_ports=(80,)),
        max_lifetime_seconds=60.7,
    )
    req = only_start(gateway)
    assert list(req.tags) == ["d1", "d2", "c1"]
    assert list(req.profile_ids) == ["p1"]  # the call's list replaces the defaults'
    assert list(req.profile_names) == []
    assert list(req.runner_ids) == ["r9"]
    assert dict(req.environment_variables) == {"A": "1", "B": "2"}
    assert dict(req.pod_annotations) == {"x": "1"}
    assert req.container_image == "img:1"
    assert req.max_lifetime_seconds == 60
    assert req.network.egress_mode == "internet"
    assert req.network.ingress_mode == "public"
    assert list(req.network.exposed_ports) == [80]
    assert req.resource_limits.memory == "1Gi"
    assert req.resource_requests.memory == "1Gi"


def test_profiles_sent_as_given(gateway: Gateway) -> None:
    Sandbox.run(profile_ids=["default"], profile_names=["gpu"], runner_ids=["r1"])
    req = only_start(gateway)
    assert list(req.profile_ids) == ["default"]
    assert list(req.profile_names) == ["gpu"]
    assert list(req.runner_ids) == ["r1"]


def test_flat_resources_go_to_both_sides(gateway: Gateway) -> None:
    Sandbox.run(resources={"cpu": "500m", "memory": "1Gi", "gpu": {"count": 1, "type": "h100"}})
    req = only_start(gateway)
    assert not req.HasField("resources")  # legacy field 4 is never sent
    for side in (req.resource_limits, req.resource_requests):
        assert side.cpu == "500m"
        assert side.memory == "1Gi"
        assert side.gpu.gpu_count == 1
        assert side.gpu.gpu_type == "h100"


def test_resource_options_fill_missing_side(gateway: Gateway) -> None:
    Sandbox.run(resources=ResourceOptions(requests={"cpu": "1", "memory": "1Gi"}))
    Sandbox.run(
        resources=ResourceOptions(
            requests={"cpu": "1"},
            limits={"cpu": "2", "memory": "2Gi"},
            gpu={"count": 2, "memory_gb": 40},
        )
    )
    first, second = gateway.servicer.requests("Start")
    assert (first.resource_limits.cpu, first.resource_limits.memory) == ("1", "1Gi")
    assert (second.resource_requests.cpu, second.resource_requests.memory) == ("1", "")
    assert (second.resource_limits.cpu, second.resource_limits.memory) == ("2", "2Gi")
    assert second.resource_limits.gpu.gpu_memory_gb == 40
    assert second.resource_requests.gpu.gpu_count == 2


@pytest.mark.parametrize(
    ("resources", "error"),
    [
        ({"cpu": "abc"}, ValueError),
        ({"memory": "-1Gi"}, ValueError),
        ({"cpux": "1"}, TypeError),
        (ResourceOptions(requests={"cpu": "2"}, limits={"cpu": "1"}), ValueError),
        (ResourceOptions(requests={"memory": "2Gi"}, limits={"memory": "2G"}), ValueError),
        ({"gpu": {"count": 1, "type": "a", "memory_gb": 2}}, ValueError),
        ({"gpu": {"kind": "a"}}, TypeError),
        ({"cpu": True}, TypeError),
        ("2 cpus", TypeError),
    ],
)
def test_bad_resources_fail_before_any_rpc(
    gateway: Gateway, resources: object, error: type
) -> None:
    with pytest.raises(error):
        Sandbox.run(resources=resources)  # type: ignore[arg-type]
    assert gateway.servicer.requests("Start") == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tags": "oops"}, TypeError),
        ({"profile_ids": "default"}, TypeError),
        ({"profile_ids": [" "]}, ValueError),
        ({"network": {"egress": "internet"}}, TypeError),
        ({"network": NetworkOptions}, TypeError),
        ({"max_lifetime_seconds": 0}, ValueError),
        ({"container_image": ""}, ValueError),
        ({"environment_variables": {"A": 1}}, TypeError),
    ],
)
def test_bad_arguments(gateway: Gateway, kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Sandbox.run(**kwargs)  # type: ignore[arg-type]
    assert gateway.servicer.requests("Start") == []


def test_network_options_validation() -> None:
    with pytest.raises(ValueError):
        NetworkOptions(exposed_ports=(0,))
    with pytest.raises(ValueError):
        NetworkOptions(egress_mode="")
    assert NetworkOptions(exposed_ports=[80, 443]).exposed_ports == (80, 443)  # type: ignore[arg-type]


def test_mounts_ports_secrets_snapshot(gateway: Gateway) -> None:
    Sandbox.run(
        mounted_files=[{"mount_path": "/etc/app.conf", "file_content": "x=1"}],
        ports=[{"container_port": 8080, "name": "http"}],
        s3_mount={"bucket": "b", "directory": "d", "mount_path": "/mnt"},
        file_system_snapshot={
            "mount_path": "/data",
            "size": "1Gi",
            "file_system_snapshot_id": "fs1",
        },
        secrets=[Secret(store="wandb", name="K1", field="f"), {"store": "s2", "name": "n"}],
        defaults=SandboxDefaults(secrets=(Secret(store="wandb", name="K0", env_var="E0"),)),
        annotations={"a": "b"},
        max_timeout_seconds=30,
    )
    req = only_start(gateway)
    assert req.mounted_files[0].file_content == b"x=1"
    assert req.ports[0].container_port == 8080
    assert req.s3_mount.mount_path == "/mnt"
    assert req.file_system.file_system_snapshot.file_system_snapshot_id == "fs1"
    assert req.max_timeout_seconds == 30
    stores = {
        s.store_name: [(m.path, m.field, m.env_var) for m in s.secrets] for s in req.secret_stores
    }
    assert stores == {"wandb": [("K0", "", "E0"), ("K1", "f", "K1")], "s2": [("n", "", "n")]}


def test_start_response_fills_properties(gateway: Gateway) -> None:
    sb = Sandbox.run(
        network=NetworkOptions(
            ingress_mode="public", exposed_ports=(8080,), egress_mode="internet"
        ),
        resources={"cpu": "1", "gpu": 1},
    )
    assert sb.service_address == "10.0.0.1:8080"
    assert sb.exposed_ports == ((8080, ""),)
    assert sb.applied_ingress_mode == "public"
    assert sb.applied_egress_mode == "internet"
    assert sb.resource_limits == {"cpu": "1"}
    assert sb.resource_requests == {"cpu": "1"}
    assert sb.resource_gpu == {"count": 1}


def test_unstarted_sandbox_and_start(gateway: Gateway) -> None:
    sb = Sandbox(command="python", args=["-c", "print(1)"], container_image="img")
    assert sb.sandbox_id is None and sb.status is None
    assert gateway.servicer.requests("Start") == []
    sb.start().result()
    sb.start().result()  # idempotent
    req = only_start(gateway)
    assert (req.command, list(req.args), req.container_image) == (
        "python",
        ["-c", "print(1)"],
        "img",
    )
    assert sb.status is SandboxStatus.PENDING


def test_command_without_args_sends_no_default_args(gateway: Gateway) -> None:
    Sandbox(command="python").start().result()
    assert list(only_start(gateway).args) == []  # type: ignore[attr-defined]


def test_start_errors_are_mapped(gateway: Gateway) -> None:
    gateway.servicer.fail(
        "Start",
        failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "no capacity"),
        failure(grpc.StatusCode.NOT_FOUND, "profile gpu not found"),
        failure(
            grpc.StatusCode.NOT_FOUND,
            "profile 'gpu' not found",
            "CWSANDBOX_PROFILE_NOT_FOUND",
            profile_name="gpu",
        ),
        failure(
            grpc.StatusCode.NOT_FOUND,
            "runner 'r9' not found",
            "CWSANDBOX_RUNNER_NOT_FOUND",
            runner_id="r9",
        ),
    )
    with pytest.raises(SandboxResourceExhaustedError):
        Sandbox.run()
    # A bare NOT_FOUND says nothing more: the sandbox is what is missing.
    with pytest.raises(SandboxNotFoundError, match="profile gpu not found"):
        Sandbox.run()
    # With the server's reason, the missing thing is named: the profile, the runner.
    with pytest.raises(ProfileNotFoundError, match="profile 'gpu' not found") as profile:
        Sandbox.run(profile_names=["gpu"])
    assert profile.value.profile_name == "gpu"
    with pytest.raises(RunnerNotFoundError, match="runner 'r9' not found") as runner:
        Sandbox.run(runner_ids=["r9"])
    assert runner.value.runner_id == "r9"


def test_api_key_read_once_per_sandbox(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWSANDBOX_API_KEY", "k1")
    sb = Sandbox.run()
    monkeypatch.setenv("CWSANDBOX_API_KEY", "k2")
    sb.exec(["echo"]).result()
    Sandbox.list().result()
    auth = {c.method: c.metadata.get("authorization") for c in gateway.servicer.calls}
    assert auth["Start"] == "Bearer k1"
    assert auth["Get"] == "Bearer k1"
    assert auth["StreamExec"] == "Bearer k1"
    assert auth["List"] == "Bearer k2"  # class-level calls read the key each time


def test_no_auth_header_without_key(gateway: Gateway) -> None:
    Sandbox.run()
    assert "authorization" not in gateway.servicer.calls[0].metadata


def test_start_deadline_is_request_timeout(gateway: Gateway) -> None:
    Sandbox.run(request_timeout_seconds=42)
    remaining = gateway.servicer.recorded("Start")[0].time_remaining
    # gRPC rounds the timeout it sends up to its wire unit, so allow a fraction above 42
    assert remaining is not None and 40 < remaining <= 42.5


def test_context_manager_stops(gateway: Gateway) -> None:
    with Sandbox.run() as sb:
        assert sb.exec(["echo", "hi"]).result().stdout == "hi\n"
    assert [r.sandbox_id for r in gateway.servicer.requests("Stop")] == ["sb-1"]
    assert sb.status is SandboxStatus.COMPLETED


def test_with_unstarted_sandbox_starts_it(gateway: Gateway) -> None:
    with Sandbox(container_image="img") as sb:
        assert sb.sandbox_id == "sb-1"
    assert len(gateway.servicer.requests("Stop")) == 1


def test_base_url_precedence(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # $CWSANDBOX_BASE_URL overrides SandboxDefaults.base_url (as in the official client) ...
    Sandbox.run(defaults=SandboxDefaults(base_url="http://127.0.0.1:9"))
    assert len(gateway.servicer.requests("Start")) == 1
    # ... and without the variable, the defaults' base URL is used.
    monkeypatch.delenv("CWSANDBOX_BASE_URL")
    sb = Sandbox(defaults=SandboxDefaults(base_url=gateway.url))
    sb.start().result()
    assert len(gateway.servicer.requests("Start")) == 2
