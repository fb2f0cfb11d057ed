"""Stop (§4.5), List with pagination and filters, from_id and Delete (§4.6, §8).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import time

import grpc
import pytest

from cwsandbox import (
    CWSandboxError,
    Sandbox,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
    SandboxTerminalStateUnavailableError,
    SandboxTerminatedError,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from tests.unit.client.sandbox.gateway_standin import Gateway, failure

S = gw.SandboxStatus


def test_stop_request_and_wait_for_terminal(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.stop().result()
    (stop,) = gateway.servicer.recorded("Stop")
    assert stop.request.sandbox_id == "sb-1"
    assert stop.request.graceful_shutdown_seconds == 10
    assert stop.request.max_timeout_seconds == 15
    assert not stop.request.file_system_snapshot_on_stop
    assert not stop.request.HasField("wait_for_ready")
    assert stop.time_remaining is not None and 19 < stop.time_remaining <= 20.2
    # After Stop the client polls Get until a terminal status (TERMINATING, then COMPLETED).
    assert len(gateway.servicer.requests("Get")) == 2
    assert sb.status is SandboxStatus.COMPLETED
    assert sb.returncode == 0


def test_stop_custom_grace(gateway: Gateway) -> None:
    Sandbox.run().stop(graceful_shutdown_seconds=3).result()
    stop = gateway.servicer.requests("Stop")[0]
    assert (stop.graceful_shutdown_seconds, stop.max_timeout_seconds) == (3, 8)
    with pytest.raises(ValueError):
        Sandbox.run().stop(graceful_shutdown_seconds=-1)


def test_stop_success_false(gateway: Gateway) -> None:
    gateway.servicer.stop_success = False
    with pytest.raises(SandboxError, match="Failed to stop sandbox: runner refused"):
        Sandbox.run().stop().result()


def test_stop_has_no_overall_timeout(gateway: Gateway) -> None:
    sb = Sandbox.run(request_timeout_seconds=0.5)
    box = gateway.servicer.boxes["sb-1"]
    box.status = S.SANDBOX_STATUS_RUNNING
    box.after_stop = (S.SANDBOX_STATUS_TERMINATING, None)
    ref = sb.stop()
    time.sleep(1.2)  # longer than request_timeout_seconds: still waiting, no error
    assert not ref.done()
    box.script = [(S.SANDBOX_STATUS_COMPLETED, 143)]
    ref.result(timeout=10)
    assert sb.returncode == 143


def test_not_found_after_stop_is_tolerated_briefly(gateway: Gateway) -> None:
    gateway.servicer.get_not_found_after_stop = True
    sb = Sandbox.run()
    started = time.monotonic()
    with pytest.raises(SandboxTerminalStateUnavailableError):
        sb.stop().result()
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed <= 4.0
    assert len(gateway.servicer.requests("Get")) >= 4


def test_stop_missing_ok(gateway: Gateway) -> None:
    sb = Sandbox.run()
    del gateway.servicer.boxes["sb-1"]
    with pytest.raises(SandboxNotFoundError):
        sb.stop().result()
    sb.stop(missing_ok=True).result()
    assert sb.status is SandboxStatus.TERMINATED
    assert gateway.servicer.requests("Get") == []  # no polling after a missing stop
    sb.stop().result()  # already terminal locally: no RPC
    assert len(gateway.servicer.requests("Stop")) == 2


def test_stop_never_started_sends_nothing(gateway: Gateway) -> None:
    sb = Sandbox(container_image="img")
    sb.stop().result()
    assert gateway.servicer.calls == []


def test_wait_until_complete_after_own_stop(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.stop().result()
    with pytest.raises(SandboxTerminatedError):
        sb.wait_until_complete().result()
    assert sb.wait_until_complete(raise_on_termination=False).result() is sb


def test_stop_with_snapshot(gateway: Gateway) -> None:
    Sandbox.run().stop(snapshot_on_stop=True, idempotency_key="k").result()
    stop = gateway.servicer.requests("Stop")[0]
    assert stop.file_system_snapshot_on_stop
    assert (stop.max_timeout_seconds, stop.wait_for_ready, stop.idempotency_key) == (600, True, "k")


def test_list_pages_and_resends_filters(gateway: Gateway) -> None:
    for _ in range(3):
        gateway.servicer.add_box(tags=["team", "x"])
    gateway.servicer.add_box(tags=["other"])
    gateway.servicer.add_box(status=S.SANDBOX_STATUS_COMPLETED, tags=["team"])
    found = Sandbox.list(tags=["team"]).result()
    assert [s.sandbox_id for s in found] == ["sb-1", "sb-2", "sb-3"]
    assert all(s.status is SandboxStatus.RUNNING for s in found)
    pages = gateway.servicer.requests("List")
    assert [p.page_token for p in pages] == ["", "1", "2"]
    assert all(list(p.tags) == ["team"] and p.page_size == 0 for p in pages)
    assert not any(p.include_stopped for p in pages)
    with_stopped = Sandbox.list(tags=["team"], include_stopped=True).result()
    assert len(with_stopped) == 4
    completed = Sandbox.list(status="completed").result()
    assert [s.sandbox_id for s in completed] == ["sb-5"]
    assert gateway.servicer.requests("List")[-1].status == S.SANDBOX_STATUS_COMPLETED


def test_list_filters_sent(gateway: Gateway) -> None:
    Sandbox.list(
        profile_ids=["p"], profile_names=["n"], runner_ids=["r"], status="running"
    ).result()
    req = gateway.servicer.requests("List")[0]
    assert (list(req.profile_ids), list(req.profile_names), list(req.runner_ids)) == (
        ["p"],
        ["n"],
        ["r"],
    )
    assert req.status == S.SANDBOX_STATUS_RUNNING
    with pytest.raises(ValueError):
        Sandbox.list(status="sleeping")
    with pytest.raises(TypeError):
        Sandbox.list(tags="team")  # type: ignore[arg-type]


def test_listed_sandbox_is_usable_without_get(gateway: Gateway) -> None:
    gateway.servicer.add_box()
    (sb,) = Sandbox.list().result()
    assert sb.exec(["echo", "hi"]).result().stdout == "hi\n"
    assert gateway.servicer.requests("Get") == []
    sb.stop().result()
    assert sb.status is SandboxStatus.COMPLETED


def test_list_pagination_loop_detected(gateway: Gateway) -> None:
    gateway.servicer.loop_tokens = True
    with pytest.raises(CWSandboxError, match="pagination loop detected"):
        Sandbox.list().result()


def test_from_id(gateway: Gateway) -> None:
    gateway.servicer.add_box()
    sb = Sandbox.from_id("sb-1").result()
    assert (sb.sandbox_id, sb.status, sb.runner_id) == ("sb-1", SandboxStatus.RUNNING, "r1")
    remaining = gateway.servicer.recorded("Get")[0].time_remaining
    assert remaining is not None and remaining > 290  # 300 s deadline
    with pytest.raises(SandboxNotFoundError):
        Sandbox.from_id("sb-404").result()
    with pytest.raises(ValueError):
        Sandbox.from_id("  ")


def test_delete(gateway: Gateway) -> None:
    gateway.servicer.add_box()
    Sandbox.delete("sb-1").result()
    assert "sb-1" not in gateway.servicer.boxes
    with pytest.raises(SandboxNotFoundError):
        Sandbox.delete("sb-1").result()
    Sandbox.delete("sb-1", missing_ok=True).result()
    gateway.servicer.add_box()
    gateway.servicer.delete_success = False
    with pytest.raises(SandboxError, match="in use"):
        Sandbox.delete("sb-2").result()
    assert gateway.servicer.requests("Get") == []  # no polling after Delete


def test_list_error_is_mapped(gateway: Gateway) -> None:
    gateway.servicer.fail("List", failure(grpc.StatusCode.INVALID_ARGUMENT, "bad tag"))
    with pytest.raises(SandboxError, match="bad tag"):
        Sandbox.list().result()
