"""``sandboxd config apply``: profiles, bindings, quotas and warm pools changed without a restart.

A real control plane (SQLite and PostgreSQL) with a real runner. A changed profile takes
effect for the next Start while a running sandbox keeps the limit it started with (read from
its cgroup on the host); a new profile is offered at once; an invalid file changes nothing
and names the line; a warm pool added by an apply is built by the connected runner; quotas
change for the next Start; and a SIGKILLed control plane comes back with the last applied
revision.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import yaml

from sandboxd.controlplane.live_config import embedded_text
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    Cluster,
    error_reason,
    rpc_error,
    sandbox_init,
    sandboxd_admin,
    wait_until,
)

MIB = 1 << 20


def memory_limit(sandbox_id: str) -> int:
    """The memory limit the host enforces on the sandbox: the lowest on its cgroup's path."""
    text = Path(f"/proc/{sandbox_init(sandbox_id)}/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
            break
        if controllers == "":
            base, name = Path("/sys/fs/cgroup"), "memory.max"
    else:
        raise AssertionError(f"no memory cgroup for {sandbox_id}: {text}")
    limits = []
    directory = base / path.lstrip("/")
    while directory != base.parent and directory.is_relative_to(base):
        limit_file = directory / name
        if limit_file.exists():
            value = limit_file.read_text().strip()
            if value != "max":
                limits.append(int(value))
        directory = directory.parent
    return min(limits)


def config_with(change: Any) -> str:
    """The embedded configuration, changed by ``change(data)``, as YAML."""
    data = yaml.safe_load(embedded_text())
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def profile(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in data["profiles"] if p["display_name"] == name)
    return found


def apply(cluster: Cluster, text: str, source: str = "test.yaml") -> admin_pb2.ApplyConfigResponse:
    request = admin_pb2.ApplyConfigRequest(text=text, source=source)
    answer: admin_pb2.ApplyConfigResponse = cluster.control_plane.admin(
        "ApplyConfig", request, admin_pb2.ApplyConfigResponse
    )
    return answer


def current(cluster: Cluster) -> admin_pb2.ConfigRevision:
    answer: admin_pb2.ConfigRevision = cluster.control_plane.admin(
        "GetConfig", admin_pb2.GetConfigRequest(), admin_pb2.ConfigRevision
    )
    return answer


def shrink_locked_down_and_add_tiny(data: dict[str, Any]) -> None:
    profile(data, "locked-down")["spec"]["resource_defaults"]["memory_limit"] = "256Mi"
    tiny = {
        "display_name": "tiny",
        "description": "Added by config apply.",
        "spec": {
            "container_image": "python:3.11",
            "resource_defaults": {"memory_limit": "128Mi", "cpu_limit": "250m"},
            "network": {"egress": {"default": "none", "modes": {"none": {"type": "none"}}}},
        },
    }
    pooled = {**tiny, "display_name": "pooled", "spec": {**tiny["spec"], "warm_pool": {"size": 1}}}
    data["profiles"] += [tiny, pooled]
    data["default_bindings"] += [{"profile": "tiny"}, {"profile": "pooled"}]


def test_an_applied_profile_takes_effect_for_the_next_start_only(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    before = current(cluster)
    assert before.revision == 0 and "locked-down" in before.text  # the embedded default
    old = gateway.start(cluster.runner_id)  # locked-down: 512Mi
    assert memory_limit(old) == 512 * MIB

    text = config_with(shrink_locked_down_and_add_tiny)
    applied = apply(cluster, text)
    assert applied.revision.revision == 1 and applied.profiles == 4
    assert (current(cluster).revision, current(cluster).text) == (1, text)

    new = gateway.start(cluster.runner_id)
    assert memory_limit(new) == 256 * MIB  # the next Start sees the new profile...
    assert memory_limit(old) == 512 * MIB  # ...the running sandbox keeps what it started with
    assert gateway.exec(old, "true").ok
    tiny = gateway.start(cluster.runner_id, profile="tiny")  # a new profile, offered at once
    assert memory_limit(tiny) == 128 * MIB

    # The warm pool the apply added is built by the connected runner, without a reconnect.
    def pool_ready() -> bool:
        with cluster.discovery() as client:
            found = client.get_profile("pooled", cluster.runner_id)
        return found.sandboxd_warm_pool.size == 1 and found.sandboxd_warm_pool.ready == 1

    wait_until("the added profile's warm pool ready", pool_ready, 60)

    # A SIGKILLed control plane comes back with the revision applied last.
    cluster.control_plane.kill()
    cluster.restart_control_plane()
    cluster.wait_health(True, RECOVERY)
    assert current(cluster).revision == 1
    gateway = cluster.gateway()
    assert memory_limit(gateway.start(cluster.runner_id)) == 256 * MIB
    assert memory_limit(gateway.start(cluster.runner_id, profile="tiny")) == 128 * MIB


def test_an_invalid_file_changes_nothing_and_names_the_line(cluster: Cluster) -> None:
    good = config_with(shrink_locked_down_and_add_tiny)
    apply(cluster, good)
    bad = good.replace("memory_limit: 256Mi", "memory_limit: lots", 1)
    line = 1 + bad.splitlines().index(next(x for x in bad.splitlines() if "lots" in x))

    error = rpc_error(lambda: apply(cluster, bad, "bad.yaml"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert f"bad.yaml: profiles[1].spec.resource_defaults.memory_limit (line {line})" in details
    assert "not a quantity: 'lots'" in details
    # Nothing changed: the same revision, and Starts still get the good file's profile.
    assert current(cluster).revision == 1 and current(cluster).text == good
    assert memory_limit(cluster.gateway().start(cluster.runner_id)) == 256 * MIB

    for text, why in [
        ("profiles: [", "not valid YAML (line "),
        ("profiles: []", "profiles"),
        (good.replace("- profile: tiny", "- profile: ghost", 1), "unknown profile 'ghost'"),
        ("x" * (1 << 20) + "\n", "longer than"),
    ]:
        refused = rpc_error(lambda t=text: apply(cluster, t))  # type: ignore[misc]
        assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT, why
        assert why in (refused.details() or ""), (why, refused.details())
    assert current(cluster).revision == 1


def test_quotas_change_for_the_next_start(cluster: Cluster) -> None:
    member = cluster.control_plane.create_key("team-q")
    gateway = cluster.gateway(member)
    first = gateway.start(cluster.runner_id)

    def quota(limit: int) -> Any:
        def change(data: dict[str, Any]) -> None:
            data["quotas"] = {"organizations": {"team-q": {"running_sandboxes": limit}}}

        return change

    apply(cluster, config_with(quota(1)))
    refused = rpc_error(lambda: gateway.create(cluster.runner_id))
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(refused) == "CWSANDBOX_RUNNING_SANDBOXES_QUOTA_EXCEEDED"
    assert gateway.get(first).sandbox_status == g.SANDBOX_STATUS_RUNNING  # untouched

    apply(cluster, config_with(quota(2)))
    assert gateway.start(cluster.runner_id)


def test_the_cli_applies_and_shows_and_members_may_not(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "platform.yaml"
    path.write_text(config_with(shrink_locked_down_and_add_tiny))
    done = sandboxd_admin(cluster.control_plane, "config", "apply", str(path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"applied as revision 1 \(4 profiles", done.stdout), done.stdout
    shown = sandboxd_admin(cluster.control_plane, "config", "show")
    assert shown.returncode == 0 and f"from {path}" in shown.stdout
    assert "display_name: tiny" in shown.stdout

    path.write_text(path.read_text().replace("memory_limit: 128Mi", "memory_limit: -1", 1))
    done = sandboxd_admin(cluster.control_plane, "config", "apply", str(path))
    assert done.returncode == 1 and "(line " in done.stderr, done.stderr

    member = cluster.control_plane.create_key("team-a")
    with cluster.control_plane.channel(member) as channel:
        call = channel.unary_unary(
            "/sandboxd.admin.v1.AdminService/ApplyConfig",
            request_serializer=admin_pb2.ApplyConfigRequest.SerializeToString,
            response_deserializer=admin_pb2.ApplyConfigResponse.FromString,
        )
        request = admin_pb2.ApplyConfigRequest(text=embedded_text())
        denied = rpc_error(lambda: call(request, timeout=10))
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert current(cluster).revision == 1
