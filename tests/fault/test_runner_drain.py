"""Cordon, drain, uncordon and remove runners, with real runners, sandboxes and crashes.

Two runners (``east``, ``west``) on hosts of their own. Cordoning ``east`` keeps placement
off it (discovery says so, a Start naming it is refused saying why) while its sandboxes run
on; draining it moves it to zero sandboxes while ``west`` keeps serving; a drain's deadline
is enforced even when the control plane is SIGKILLed and restarted before it comes; removing
a runner is refused while it is connected or holds sandboxes, and forgets it afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    Cluster,
    error_reason,
    prepare_image,
    rpc_error,
    sandbox_pids,
    sandboxd_admin,
    wait_until,
)
from tests.support.processes import RunnerProcess

ENDED = (g.SANDBOX_STATUS_COMPLETED, g.SANDBOX_STATUS_TERMINATED, g.SANDBOX_STATUS_FAILED)


@pytest.fixture
def west(cluster: Cluster) -> Iterator[RunnerProcess]:
    """A second healthy runner on a host of its own."""
    state_dir = cluster.root / "west"
    prepare_image(state_dir)
    runner = cluster.network.add_host().runner(cluster.control_plane, state_dir, runner_id="west")
    runner.start()
    wait_until("west healthy", lambda: healthy(cluster, "west"), 60)
    yield runner


def healthy(cluster: Cluster, runner_id: str) -> bool:
    with cluster.discovery() as client:
        return any(r.runner_id == runner_id and r.healthy for r in client.all_runners())


def lifecycle(cluster: Cluster, method: str, request: object) -> admin_pb2.RunnerLifecycle:
    answer: admin_pb2.RunnerLifecycle = cluster.control_plane.admin(
        method,
        request,  # type: ignore[arg-type]
        admin_pb2.RunnerLifecycle,
    )
    return answer


def state(cluster: Cluster, runner_id: str) -> admin_pb2.RunnerLifecycle:
    request = admin_pb2.GetRunnerLifecycleRequest(runner_id=runner_id)
    return lifecycle(cluster, "GetRunnerLifecycle", request)


def start_anywhere(cluster: Cluster) -> tuple[str, str]:
    """Start a sandbox wherever placement puts it; (sandbox id, runner id)."""
    gateway = cluster.gateway()
    response = gateway.gateway.Start(
        g.StartSandboxRequest(command="sleep", args=["3600"], profile_names=["locked-down"]),
        timeout=60,
    )
    gateway.started.append(response.sandbox_id)
    found = gateway.wait(response.sandbox_id, lambda s: s == g.SANDBOX_STATUS_RUNNING, 60)
    return response.sandbox_id, found.runner_id


def test_drain_moves_a_runner_to_zero_while_the_other_keeps_serving(
    cluster: Cluster, west: RunnerProcess
) -> None:
    gateway = cluster.gateway()
    on_east = [gateway.start("east"), gateway.start("east")]
    on_west = gateway.start("west")

    cordoned = lifecycle(cluster, "CordonRunner", admin_pb2.CordonRunnerRequest(runner_id="east"))
    assert (cordoned.cordoned, cordoned.draining, cordoned.live_sandboxes) == (True, False, 2)
    with cluster.discovery() as client:
        east = client.get_runner("east")
    assert east.cordoned and not east.draining and east.healthy

    # Placement never picks the cordoned runner: six Starts all land on west...
    assert {start_anywhere(cluster)[1] for _ in range(6)} == {"west"}
    # ...and a Start that names it is refused, saying why.
    error = rpc_error(lambda: gateway.gateway.Start(
        g.StartSandboxRequest(command="true", profile_names=["locked-down"], runner_ids=["east"]),
        timeout=30,
    ))  # fmt: skip
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "runner east: cordoned by an administrator" in (error.details() or "")
    # Its own sandboxes run on, untouched by the cordon.
    assert all(gateway.exec(s, "true").ok for s in on_east)

    drain = admin_pb2.DrainRunnerRequest(runner_id="east", deadline_seconds=0, grace_seconds=1)
    draining = lifecycle(cluster, "DrainRunner", drain)
    assert draining.cordoned and draining.draining
    wait_until("east drained", lambda: state(cluster, "east").live_sandboxes == 0, 60)
    for sandbox_id in on_east:
        assert gateway.get(sandbox_id).sandbox_status in ENDED
        wait_until(f"{sandbox_id} gone from the host", lambda s=sandbox_id: not sandbox_pids(s), 30)
    # The drain ends by itself once the runner is empty; the runner stays cordoned.
    wait_until("east's drain over", lambda: not state(cluster, "east").draining, 10)
    assert state(cluster, "east").cordoned

    # West kept serving throughout, and still does.
    assert gateway.exec(on_west, "echo", "still here").ok
    assert start_anywhere(cluster)[1] == "west"

    uncordoned = lifecycle(
        cluster, "UncordonRunner", admin_pb2.UncordonRunnerRequest(runner_id="east")
    )
    assert not uncordoned.cordoned
    again = gateway.start("east")
    assert gateway.exec(again, "true").ok


def test_a_drain_deadline_is_kept_across_a_control_plane_sigkill(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start("east")
    drain = admin_pb2.DrainRunnerRequest(runner_id="east", deadline_seconds=4, grace_seconds=1)
    started = datetime.now(UTC)
    answered = lifecycle(cluster, "DrainRunner", drain)
    deadline = answered.drain_deadline.ToDatetime(tzinfo=UTC)
    assert 3 <= (deadline - started).total_seconds() <= 6
    assert gateway.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_RUNNING  # not yet due

    cluster.control_plane.kill()
    cluster.restart_control_plane()
    cluster.wait_health(True, RECOVERY)

    with cluster.discovery() as client:
        east = client.get_runner("east")
    assert east.cordoned and east.draining  # the cordon and the drain survived the crash
    gateway = cluster.gateway()
    gateway.wait(sandbox_id, lambda s: s in ENDED, 60)
    assert datetime.now(UTC) >= deadline  # stopped at the deadline, not before
    wait_until("east drained", lambda: not state(cluster, "east").draining, 30)
    assert state(cluster, "east").cordoned


def test_remove_forgets_only_a_runner_that_is_gone(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start("east")

    def remove(fail: bool) -> admin_pb2.RemoveRunnerResponse:
        request = admin_pb2.RemoveRunnerRequest(runner_id="east", fail_sandboxes=fail)
        answer: admin_pb2.RemoveRunnerResponse = cluster.control_plane.admin(
            "RemoveRunner", request, admin_pb2.RemoveRunnerResponse
        )
        return answer

    connected = rpc_error(lambda: remove(True))
    assert connected.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(connected) == "CWSANDBOX_RUNNER_CONNECTED"

    cluster.runner.kill()
    cluster.wait_health(False, RECOVERY)
    wait_until("east disconnected", lambda: not state(cluster, "east").healthy, RECOVERY)
    holding = rpc_error(lambda: remove(False))
    assert holding.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(holding) == "CWSANDBOX_RUNNER_HAS_SANDBOXES"
    assert gateway.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_RUNNING  # nothing lost

    assert remove(True).failed_sandboxes == 1
    failed = gateway.get(sandbox_id)
    assert failed.sandbox_status == g.SANDBOX_STATUS_FAILED  # its record stays readable
    with cluster.discovery() as client:
        assert "east" not in {r.runner_id for r in client.all_runners()}
    # Forgotten in the database too: a restarted control plane does not list it either.
    cluster.control_plane.kill()
    cluster.restart_control_plane()
    with cluster.discovery() as client:
        assert "east" not in {r.runner_id for r in client.all_runners()}


def test_runner_commands_are_admin_only_and_check_their_input(cluster: Cluster) -> None:
    member = cluster.control_plane.create_key("team-a")
    with cluster.control_plane.channel(member) as channel:
        call = channel.unary_unary(
            "/sandboxd.admin.v1.AdminService/CordonRunner",
            request_serializer=admin_pb2.CordonRunnerRequest.SerializeToString,
            response_deserializer=admin_pb2.RunnerLifecycle.FromString,
        )
        denied = rpc_error(
            lambda: call(admin_pb2.CordonRunnerRequest(runner_id="east"), timeout=10)
        )
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert not state(cluster, "east").cordoned

    unknown = rpc_error(lambda: lifecycle(
        cluster, "CordonRunner", admin_pb2.CordonRunnerRequest(runner_id="nowhere")
    ))  # fmt: skip
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    for field, request in [
        ("deadline_seconds", admin_pb2.DrainRunnerRequest(runner_id="east", deadline_seconds=-1)),
        (
            "deadline_seconds",
            admin_pb2.DrainRunnerRequest(runner_id="east", deadline_seconds=10**9),
        ),
        ("grace_seconds", admin_pb2.DrainRunnerRequest(runner_id="east", grace_seconds=-5)),
        ("runner_id", admin_pb2.DrainRunnerRequest(runner_id="")),
    ]:
        bad = rpc_error(lambda r=request: lifecycle(cluster, "DrainRunner", r))  # type: ignore[misc]
        assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in (bad.details() or ""), (field, bad.details())
    assert not state(cluster, "east").cordoned  # refused calls changed nothing


def test_the_cli_cordons_drains_and_uncordons(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start("east")
    done = sandboxd_admin(cluster.control_plane, "runners", "cordon", "east")
    assert done.returncode == 0, done.stderr
    assert "runner east: cordoned, healthy, 1 sandbox(es)" in done.stdout
    started = time.monotonic()
    done = sandboxd_admin(
        cluster.control_plane, "runners", "drain", "east", "--deadline", "2s", "--grace", "1"
    )
    assert done.returncode == 0, done.stderr
    assert "draining" in done.stdout and "runner east drained" in done.stdout
    assert time.monotonic() - started >= 2  # it let the sandbox run until the deadline
    assert gateway.get(sandbox_id).sandbox_status in ENDED
    done = sandboxd_admin(cluster.control_plane, "runners", "uncordon", "east")
    assert done.returncode == 0 and "schedulable" in done.stdout, done
    done = sandboxd_admin(cluster.control_plane, "runners", "drain", "east", "--deadline", "9y")
    assert done.returncode == 2 and "--deadline" in done.stderr, done
