"""A runner whose disk is full stops attracting Starts: real control plane, real runners.

Two runners with the local backend; the filesystem of ``a-full``'s writable layers is (or
becomes) a 16 MiB tmpfs, too small for any sandbox's layer. Placement prefers the least
loaded runner, and before, such a runner got every Start of the cluster: each start failed
there for want of disk, the failure did not count against the runner, and it gave the
reservation back, so ``a-full`` stayed the least loaded. Now:

* the runner reports the largest layer it can make in its registration and heartbeats
  (``Resources.disk_room_bytes``), and placement skips it for profiles whose layer is larger;
* a start that fails for want of disk anyway (it filled up since the last heartbeat) is
  ``RESOURCE_EXHAUSTED`` / ``CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED``, which the start backoff
  holds against the runner, and the runner reports the room it has left in a heartbeat
  sent just before that failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.up import ensure_default_image
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc
from tests.integration.test_placement_backends import refused, start, wait_status
from tests.integration.test_placement_rejections import details
from tests.support.postgres import small_tmpfs
from tests.support.processes import ControlPlaneProcess, RunnerProcess

pytestmark = pytest.mark.e2e
NO_ROOM = "this runner has no room for the sandbox: the runner's disk is full: "
SKIPPED = (
    "runner a-full, profile default: its disk is full: it has room for a writable layer of at most "
)
Gateway = gateway_pb2_grpc.GatewayServiceStub


@contextlib.contextmanager
def two_runners(root: Path, full_first: bool, heartbeat: float = 0.5) -> Iterator[Gateway]:
    """``a-full`` and ``b-roomy``; ``a-full``'s layers on a 16 MiB tmpfs, mounted before
    the runners start (``full_first``) or once both have registered."""
    if os.geteuid() != 0:
        pytest.skip("the runners' local backend needs root")
    cp = ControlPlaneProcess(
        data_dir=root / "cp", heartbeat_interval=heartbeat, health_timeout=max(10, heartbeat * 4)
    ).start()
    runners: list[RunnerProcess] = []
    channel = cp.channel()
    disk = root / "a-data" / "backend" / "disk"
    with contextlib.ExitStack() as mounts:
        try:
            if full_first:
                mounts.enter_context(small_tmpfs(disk, size="16m"))
            for name in ("a-full", "b-roomy"):
                data = root / f"{name[0]}-data"
                ensure_default_image(data)  # from the machine-wide build cache
                args = ["--backend", "local", "--data-dir", str(data)]
                runners.append(RunnerProcess(cp, root / name, name, extra_args=args).start())
            with cp.discovery() as client:
                for name in ("a-full", "b-roomy"):
                    client.wait_for(name, healthy=True, timeout=60)
            if not full_first:
                mounts.enter_context(small_tmpfs(disk, size="16m"))
            yield gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        finally:
            channel.close()
            for runner in runners:
                runner.stop()
            cp.stop()


def stop_all(gateway: Gateway, sandbox_ids: list[str]) -> None:
    for sandbox_id in sandbox_ids:
        stop = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=0)
        gateway.Stop(stop, timeout=60)


def test_a_runner_whose_disk_is_full_gets_no_starts(tmp_path: Path) -> None:
    with two_runners(tmp_path, full_first=True) as gateway:
        running: list[str] = []
        try:
            for _ in range(3):  # a-full is the least loaded all along
                running.append(start(gateway))
                got = wait_status(gateway, running[-1], g.SANDBOX_STATUS_RUNNING)
                assert got.runner_id == "b-roomy"
            _, violations = details(refused(gateway, runner_ids=["a-full"]))
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(SKIPPED), description
            assert description.endswith(", the profile's is 10Gi"), description
        finally:
            stop_all(gateway, running)


def test_a_runner_whose_disk_fills_up_fails_one_start_only(tmp_path: Path) -> None:
    """The disk fills up after the runner said it had room (heartbeats 20 s apart): the
    start placed there fails, naming the runner's disk, and counts against the runner. The
    runner sends a heartbeat with the room it has left before the failure, so the next
    Start already goes to ``b-roomy``. Before, the next regular heartbeat (20 s here) or the
    backoff (after three failures) did; and before that, every Start failed on ``a-full``."""
    with two_runners(tmp_path, full_first=False, heartbeat=20) as gateway:
        running = [start(gateway, runner_ids=["b-roomy"])]  # b-roomy is now the more loaded
        try:
            assert wait_status(gateway, running[0], g.SANDBOX_STATUS_RUNNING).runner_id
            failed: list[g.GetSandboxResponse] = []
            for _ in range(4):
                got = wait_status(
                    gateway, start(gateway), g.SANDBOX_STATUS_RUNNING, g.SANDBOX_STATUS_FAILED
                )
                if got.sandbox_status == g.SANDBOX_STATUS_RUNNING:
                    running.append(got.sandbox_id)
                    assert got.runner_id == "b-roomy"
                    break
                failed.append(got)
            assert running[1:], f"every Start failed: {[f.status_reason for f in failed]}"
            [one] = failed
            assert one.runner_id == "a-full"
            assert one.status_reason.startswith(NO_ROOM), one.status_reason
            _, violations = details(refused(gateway, runner_ids=["a-full"]))
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(SKIPPED), description  # the room, not a backoff
        finally:
            stop_all(gateway, running)
