"""A runner whose disk is full stops attracting Starts: real control plane, real runners.

Two runners with the local backend; the filesystem of ``a-full``'s writable layers is a
16 MiB tmpfs, too small for any sandbox's layer. Placement prefers the least loaded runner,
and before, a start that failed there for want of disk did not count against the runner:
each failure gave its reservation back, so ``a-full`` stayed the least loaded and every
Start of the cluster landed on it and failed. Now the runner answers such a start with
``RESOURCE_EXHAUSTED`` / ``CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED``, which the start backoff
holds against it: after three failures placement skips it (and says why when it is asked
for by name), and Starts land on ``b-roomy``.
"""

from __future__ import annotations

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
FULL_DISK = (
    "this runner has no room for the sandbox: the runner's disk is full: "  # and the numbers
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    if os.geteuid() != 0:
        pytest.skip("the runners' local backend needs root")
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    runners: list[RunnerProcess] = []
    channel = cp.channel()
    with small_tmpfs(tmp_path / "a-data" / "backend" / "disk", size="16m"):
        try:
            for name in ("a-full", "b-roomy"):
                data = tmp_path / f"{name[0]}-data"
                ensure_default_image(data)  # from the machine-wide build cache
                args = ["--backend", "local", "--data-dir", str(data)]
                runners.append(RunnerProcess(cp, tmp_path / name, name, extra_args=args).start())
            with cp.discovery() as client:
                for name in ("a-full", "b-roomy"):
                    client.wait_for(name, healthy=True, timeout=60)
            yield gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        finally:
            channel.close()
            for runner in runners:
                runner.stop()
            cp.stop()


def test_a_runner_out_of_disk_is_backed_off_and_starts_go_to_one_with_room(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    running = [start(gateway, runner_ids=["b-roomy"])]  # b-roomy is now the more loaded
    try:
        assert wait_status(gateway, running[0], g.SANDBOX_STATUS_RUNNING).runner_id == "b-roomy"
        for _ in range(3):  # the least loaded runner is a-full: each Start goes there
            failed = wait_status(gateway, start(gateway), g.SANDBOX_STATUS_FAILED)
            assert failed.runner_id == "a-full"
            assert failed.status_reason.startswith(FULL_DISK), failed.status_reason
            assert "MiB free in " in failed.status_reason
        running.append(start(gateway))  # a-full is backed off: placed on the other
        got = wait_status(gateway, running[-1], g.SANDBOX_STATUS_RUNNING)
        assert got.runner_id == "b-roomy"
        _, violations = details(refused(gateway, runner_ids=["a-full"]))
        [(field, description)] = violations
        assert field == "runner_ids"
        assert description.startswith(
            f"runner a-full: backed off after 3 failed starts: {FULL_DISK}"
        ), description
    finally:
        for sandbox_id in running:
            stop = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=0)
            gateway.Stop(stop, timeout=60)
