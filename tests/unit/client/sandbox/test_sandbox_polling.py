"""Waiting for a sandbox: the Get polling contract of protocol §4.3 and its outcomes.

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import itertools
import threading
import time

import grpc
import pytest

from cwsandbox import (
    Sandbox,
    SandboxDefaults,
    SandboxFailedError,
    SandboxNotFoundError,
    SandboxStatus,
    SandboxTerminatedError,
    SandboxTimeoutError,
    SandboxUnavailableError,
)
from cwsandbox._polling import backoff_delays
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from tests.unit.client.client_standin import error_info, retry_info, status_with_details
from tests.unit.client.sandbox.gateway_standin import Gateway, failure

S = gw.SandboxStatus
CREATING, PENDING, RUNNING = (
    S.SANDBOX_STATUS_CREATING,
    S.SANDBOX_STATUS_PENDING,
    S.SANDBOX_STATUS_RUNNING,
)


def get_times(gateway: Gateway) -> list[float]:
    return [c.at for c in gateway.servicer.recorded("Get")]


def test_backoff_sequence() -> None:
    delays = list(itertools.islice(backoff_delays(), 9))
    assert delays == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0125, 1.51875, 2.0, 2.0, 2.0])


def test_wait_polls_with_backoff_until_running(gateway: Gateway) -> None:
    gateway.servicer.start_script = [
        (PENDING, None),
        (CREATING, None),
        (CREATING, None),
        (RUNNING, None),
    ]
    sb = Sandbox.run()
    assert sb.wait() is sb
    assert sb.status is SandboxStatus.RUNNING
    times = get_times(gateway)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.2, 0.3, 0.45], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.25
    assert sb.runner_id == "r1" and sb.profile_id == "default" and sb.runner_group_id == "g1"
    get = gateway.servicer.recorded("Get")[0]
    assert get.time_remaining is not None and 14 < get.time_remaining <= 15.2  # 15 s per Get
    assert get.request.max_timeout_seconds == 0


def test_a_held_get_is_followed_at_once_so_running_is_seen_when_it_happens(
    gateway: Gateway,
) -> None:
    """sandboxd holds a Get of a starting sandbox (up to 0.5 s) until it runs.

    Sleeping the backoff after such a Get would see a sandbox that starts at 2.05 s only at
    2.45 s (the fourth sleep); asking again at once sees it when it happens.
    """
    gateway.servicer.hold_get_seconds = 0.5
    gateway.servicer.start_script = []  # PENDING until the timer below says RUNNING
    sb = Sandbox.run()
    box = gateway.servicer.boxes[sb.sandbox_id]  # type: ignore[index]
    flip = threading.Timer(2.05, box.set_status, args=(RUNNING,))
    flip_started = time.monotonic()
    flip.start()
    try:
        assert sb.wait() is sb
        seen_late_by = time.monotonic() - (flip_started + 2.05)
    finally:
        flip.cancel()
    assert sb.status is SandboxStatus.RUNNING
    assert seen_late_by < 0.2, f"RUNNING seen {seen_late_by:.2f} s after it happened"
    gets = len(gateway.servicer.recorded("Get"))
    assert 4 <= gets <= 7, f"{gets} Gets: one held Get after another, never a flood"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (S.SANDBOX_STATUS_FAILED, SandboxFailedError),
        (S.SANDBOX_STATUS_TERMINATED, SandboxTerminatedError),
    ],
)
def test_wait_end_states_raise(gateway: Gateway, status: int, error: type) -> None:
    gateway.servicer.start_script = [(CREATING, None), (status, None)]
    with pytest.raises(error):
        Sandbox.run().wait()


@pytest.mark.parametrize("status", [S.SANDBOX_STATUS_COMPLETED, S.SANDBOX_STATUS_UNSPECIFIED])
def test_completed_during_startup_returns(gateway: Gateway, status: int) -> None:
    gateway.servicer.start_script = [(status, 3)]
    sb = Sandbox.run("false")
    sb.wait()
    assert sb.status is SandboxStatus.COMPLETED  # UNSPECIFIED in a poll means "exited cleanly"
    assert sb.returncode == 3


def test_terminating_during_wait_returns_and_refuses_ops(gateway: Gateway) -> None:
    from cwsandbox import SandboxNotRunningError

    gateway.servicer.start_script = [(S.SANDBOX_STATUS_TERMINATING, None)]
    sb = Sandbox.run()
    sb.wait()
    assert sb.status is SandboxStatus.TERMINATING
    with pytest.raises(SandboxNotRunningError):
        sb.exec(["echo"]).result()
    assert gateway.servicer.requests("StreamExec") == []


def test_paused_counts_as_running(gateway: Gateway) -> None:
    gateway.servicer.start_script = [(S.SANDBOX_STATUS_PAUSED, None)]
    sb = Sandbox.run()
    assert sb.exec(["echo", "ok"]).result().stdout == "ok\n"


def test_wait_timeout(gateway: Gateway) -> None:
    gateway.servicer.start_script = [(CREATING, None)]
    sb = Sandbox.run()
    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError, match="last status: creating"):
        sb.wait(timeout=0.8)
    assert time.monotonic() - started < 2.5


def test_transient_errors_are_retried(gateway: Gateway) -> None:
    gateway.servicer.fail(
        "Get",
        failure(grpc.StatusCode.UNAVAILABLE, "runner away"),
        failure(grpc.StatusCode.INTERNAL, "busy", "CWSANDBOX_BACKEND_UNAVAILABLE"),
        failure(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"),
    )
    sb = Sandbox.run()
    sb.wait()
    assert sb.status is SandboxStatus.RUNNING
    assert len(gateway.servicer.requests("Get")) == 4


def test_retry_info_is_honoured(gateway: Gateway) -> None:
    blob = status_with_details(
        grpc.StatusCode.UNAVAILABLE,
        "later",
        error_info("CWSANDBOX_RUNNER_UNAVAILABLE"),
        retry_info(1),
    )
    gateway.servicer.fail("Get", (grpc.StatusCode.UNAVAILABLE, "later", blob))
    Sandbox.run().wait()
    first, second = get_times(gateway)
    assert 0.95 <= second - first <= 1.6


def test_retry_budget_runs_out(gateway: Gateway) -> None:
    gateway.servicer.fail("Get", *[failure(grpc.StatusCode.UNAVAILABLE, "down")] * 50)
    sb = Sandbox.run(defaults=SandboxDefaults(poll_retry_budget_seconds=0.6))
    with pytest.raises(SandboxUnavailableError):
        sb.wait()


def test_not_found_is_fatal(gateway: Gateway) -> None:
    gateway.servicer.fail("Get", failure(grpc.StatusCode.NOT_FOUND, "gone"))
    sb = Sandbox.run()
    with pytest.raises(SandboxNotFoundError) as info:
        sb.wait()
    assert info.value.sandbox_id == "sb-1"
    assert len(gateway.servicer.requests("Get")) == 1


def test_other_errors_are_fatal(gateway: Gateway) -> None:
    from cwsandbox import CWSandboxAuthenticationError

    gateway.servicer.fail("Get", failure(grpc.StatusCode.UNAUTHENTICATED, "bad key"))
    with pytest.raises(CWSandboxAuthenticationError):
        Sandbox.run().wait()


def test_get_status_reports_unspecified_as_is(gateway: Gateway) -> None:
    gateway.servicer.start_script = [(S.SANDBOX_STATUS_UNSPECIFIED, None), (RUNNING, None)]
    sb = Sandbox.run()
    assert sb.get_status() is SandboxStatus.UNSPECIFIED
    assert sb.get_status() is SandboxStatus.RUNNING
    assert sb.status is SandboxStatus.RUNNING


def test_wait_until_complete_reads_exit_code(gateway: Gateway) -> None:
    gateway.servicer.start_script = [
        (RUNNING, None),
        (RUNNING, None),
        (S.SANDBOX_STATUS_COMPLETED, 7),
    ]
    sb = Sandbox.run("sh", "-c", "exit 7")
    assert sb.wait_until_complete().result() is sb
    assert sb.returncode == 7
    assert sb.status is SandboxStatus.COMPLETED


def test_wait_until_complete_failed(gateway: Gateway) -> None:
    gateway.servicer.start_script = [(S.SANDBOX_STATUS_FAILED, None)]
    with pytest.raises(SandboxFailedError) as caught:
        Sandbox.run().wait_until_complete().result()
    assert caught.value.status_reason is None and str(caught.value).endswith(" failed")


@pytest.mark.parametrize("waits", ["wait", "wait_until_complete"])
def test_a_failure_says_why_in_the_servers_words(gateway: Gateway, waits: str) -> None:
    why = "lost: its processes died with their host (the runner found no exit record)"
    gateway.servicer.failed_reason = why
    gateway.servicer.start_script = [(CREATING, None), (S.SANDBOX_STATUS_FAILED, None)]
    sb = Sandbox.run()
    with pytest.raises(SandboxFailedError) as caught:
        if waits == "wait":
            sb.wait()
        else:
            sb.wait_until_complete().result()
    assert caught.value.status_reason == why
    assert caught.value.sandbox_id == sb.sandbox_id
    assert str(caught.value) == f"sandbox {sb.sandbox_id} failed: {why}"


def test_completed_without_exit_code_is_polled_again(gateway: Gateway) -> None:
    gateway.servicer.start_script = [
        (S.SANDBOX_STATUS_COMPLETED, None),
        (S.SANDBOX_STATUS_COMPLETED, 5),
    ]
    sb = Sandbox.run("true")
    sb.wait_until_complete().result()
    assert sb.returncode == 5
    first, second = get_times(gateway)
    assert 1.9 <= second - first <= 2.6
    assert gateway.servicer.recorded("Get")[1].time_remaining <= 2.2  # type: ignore[operator]


def test_await_sandbox(gateway: Gateway) -> None:
    import asyncio

    gateway.servicer.start_script = [(CREATING, None), (RUNNING, None)]

    async def main() -> Sandbox:
        sb = Sandbox(container_image="img")
        return await sb

    sb = asyncio.run(main())
    assert sb.status is SandboxStatus.RUNNING
    assert len(gateway.servicer.requests("Start")) == 1
