"""Counting sandbox record changes: each sandbox once per transition, labels kept bounded."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sandboxd.controlplane.metrics import ControlPlaneMetrics, failure_class
from sandboxd.controlplane.sandbox_model import Desired, Observed, SandboxRecord


def sample(metrics: ControlPlaneMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_sandbox_is_created_runs_and_ends_once_however_often_its_record_changes() -> None:
    metrics = ControlPlaneMetrics()
    record = SandboxRecord(sandbox_id="sb-1", runner_id="r", profile_name="default")
    metrics.observe_record(record)
    metrics.observe_record(record)  # a write that changes nothing countable
    running = replace(
        record,
        observed=Observed.RUNNING,
        observed_generation=1,
        started_at=record.created_at + timedelta(milliseconds=40),
    )
    metrics.observe_record(running)
    metrics.observe_record(running)
    ended = replace(running, desired=Desired.STOPPED, observed=Observed.COMPLETED, exit_code=0)
    metrics.observe_record(ended)
    metrics.observe_record(ended)  # an ended sandbox's later writes count nothing
    assert sample(metrics, "sandboxd_sandboxes_created_total", profile="default") == 1
    assert sample(metrics, "sandboxd_sandbox_create_seconds_count", profile="default") == 1
    assert 0.039 < sample(metrics, "sandboxd_sandbox_create_seconds_sum", profile="default") < 0.041
    assert (
        sample(metrics, "sandboxd_sandboxes_ended_total", status="completed", profile="default")
        == 1
    )


def test_a_sandbox_first_seen_after_a_restart_is_not_counted_as_created() -> None:
    metrics = ControlPlaneMetrics()
    loaded = SandboxRecord(sandbox_id="sb-2", runner_id="r", profile_name="default", version=7)
    metrics.observe_record(loaded)
    assert sample(metrics, "sandboxd_sandboxes_created_total", profile="default") == 0


def test_failure_reasons_fall_into_a_few_classes() -> None:
    assert failure_class("the sandbox was OOM-killed") == "oom_killed"
    assert failure_class("its runner's credential was revoked") == "runner_revoked"
    assert failure_class("its runner was removed by an administrator") == "runner_removed"
    assert failure_class("some text nobody planned for: /etc/passwd sb-123") == "other"
