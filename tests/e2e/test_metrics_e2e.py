"""Prometheus metrics of a real ``sandboxd up`` match what a scripted workload did.

The workload: three sandboxes started, six execs (five succeed, one exits 3), one sandbox
stopped, one Start that no runner can host (500Gi), one naming a profile nobody has. The
scrape of ``SANDBOXD_METRICS_URL`` must count exactly that: creates, time-to-running
observations, sandboxes by status, execs by code with their latency histogram, placement
rejections by the field that failed, errors by reason, the runner by health, store calls,
and no label naming a sandbox.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cwsandbox import ProfileNotFoundError, Sandbox, SandboxError
from tests.e2e.conftest import Platform, start_platform
from tests.support.faults import wait_until
from tests.support.processes import printed

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def platform_with_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory)


def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_the_workload_did(
    platform_with_metrics: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = platform_with_metrics
    url = printed(platform.proc, "SANDBOXD_METRICS_URL")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    _, before = scrape(url)
    assert value(before, "sandboxd_runners", state="healthy") == 1

    sandboxes = [Sandbox.run(profile_names=["locked-down"]) for _ in range(3)]
    ids = []
    try:
        for sandbox in sandboxes:
            sandbox.wait()
            ids.append(sandbox.sandbox_id)
        for _ in range(5):
            assert sandboxes[0].exec(["true"]).result().returncode == 0
        assert sandboxes[1].exec(["sh", "-c", "exit 3"]).result().returncode == 3
        sandboxes[2].stop().result()
        with pytest.raises(SandboxError):
            Sandbox.run(resources={"cpu": "1", "memory": "500Gi"})
        with pytest.raises(ProfileNotFoundError):
            Sandbox.run(profile_names=["no-such-profile"])

        def settled() -> bool:
            _, now = scrape(url)
            return value(now, "sandboxd_sandboxes", status="running", profile="locked-down") == 2

        wait_until("the stopped sandbox counted as ended", settled, 30)
        text, after = scrape(url)
    finally:
        for sandbox in sandboxes:
            sandbox.stop().result()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("sandboxd_sandboxes_created_total", profile="locked-down") == 3
    assert grew("sandboxd_sandbox_create_seconds_count", profile="locked-down") == 3
    assert 0 < grew("sandboxd_sandbox_create_seconds_sum", profile="locked-down") < 3 * 60
    # The stopped one ended once (COMPLETED or TERMINATED, as its main process took SIGTERM).
    assert sum(
        grew("sandboxd_sandboxes_ended_total", status=status, profile="locked-down")
        for status in ("completed", "terminated", "failed")
    ) == 1  # fmt: skip
    # Execs: six calls answered OK (an exit code is a result, not an error), six timings.
    # (a client that ends its call once it has the exit frame is counted CANCELLED; either
    # way no exec is lost or counted as an error of ours)
    answered = {
        code: grew("sandboxd_grpc_server_handled_total", method="StreamExec", code=code)
        for code in ("OK", "CANCELLED", "UNKNOWN", "INTERNAL")
    }
    assert answered["OK"] + answered["CANCELLED"] == 6, answered
    assert answered["UNKNOWN"] == answered["INTERNAL"] == 0, answered
    assert grew("sandboxd_grpc_server_handling_seconds_count", method="StreamExec") == 6
    assert grew(
        "sandboxd_placement_rejections_total",
        reason="CWSANDBOX_NO_SUITABLE_RUNNER",
        field="resource_limits.memory",
    ) == 1  # fmt: skip
    assert (
        grew("sandboxd_api_errors_total", code="NOT_FOUND", reason="CWSANDBOX_PROFILE_NOT_FOUND")
        == 1
    )
    assert grew("sandboxd_grpc_server_handled_total", method="Start", code="OK") == 3
    assert value(after, "sandboxd_runners", state="healthy") == 1
    assert value(after, "sandboxd_runner_cpu_cores", kind="allocatable") > 0
    assert grew("sandboxd_store_call_seconds_count", operation="insert") == 3  # one per Start
    assert value(after, "sandboxd_reconciler_queue_depth") >= 0
    # Bounded cardinality: no label anywhere names a sandbox.
    assert not any(sandbox_id in text for sandbox_id in ids)


def test_runner_metrics_show_each_sandbox_and_follow_its_disk(
    platform_with_metrics: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = platform_with_metrics
    url = printed(platform.proc, "SANDBOXD_RUNNER_METRICS_URL")
    assert url.endswith("/metrics/runner")
    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        key = {"runner": platform.runner_id, "sandbox": sandbox.sandbox_id}

        def reading(name: str) -> float:
            return value(scrape(url)[1], name, **key)

        assert reading("sandboxd_sandbox_memory_bytes") > 0
        assert reading("sandboxd_sandbox_pids") >= 1
        disk_before = reading("sandboxd_sandbox_disk_bytes")
        assert disk_before > 0
        written = "dd if=/dev/urandom of=/tmp/blob bs=1M count=32 status=none && sync"
        assert sandbox.exec(["sh", "-c", written]).result().returncode == 0
        assert reading("sandboxd_sandbox_disk_bytes") - disk_before >= 30 * (1 << 20)
        busy = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
        cpu_before = reading("sandboxd_sandbox_cpu_seconds_total")
        assert sandbox.exec(["sh", "-c", busy]).result().returncode == 0
        assert reading("sandboxd_sandbox_cpu_seconds_total") > cpu_before
        _, samples = scrape(url)
        assert value(samples, "sandboxd_runner_sandboxes", runner=platform.runner_id) >= 1
        # The backend's own events: none on a host whose firewall nobody reloaded, but there.
        repairs = {("runner", platform.runner_id), ("event", "firewall_repairs")}
        assert samples[("sandboxd_runner_backend_events_total", frozenset(repairs))] == 0
    # Once stopped, the sandbox is no longer listed.
    assert sandbox.sandbox_id not in scrape(url)[0]
