"""A stop that waits for its snapshot is not lost when the control plane dies in between.

``Stop`` with ``file_system_snapshot_on_stop`` and ``wait_for_ready=false`` answers at once
and stops the sandbox when its snapshot is done. Here the runner is frozen (SIGSTOP) so the
snapshot cannot finish, the control plane is SIGKILLed, the runner thawed and the control
plane started again: the snapshot must read FAILED saying why, and the sandbox must be
stopped as its caller asked, not left running forever.
"""

from __future__ import annotations

import os
import signal

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import RECOVERY, Cluster

SLEEP = ["/bin/sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait']
TERMINAL = {g.SANDBOX_STATUS_COMPLETED, g.SANDBOX_STATUS_TERMINATED, g.SANDBOX_STATUS_FAILED}


def test_a_pending_snapshot_then_stop_survives_a_control_plane_kill(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    started = gateway.gateway.Start(
        g.StartSandboxRequest(
            command=SLEEP[0],
            args=SLEEP[1:],
            container_image="python:3.11",
            profile_names=["default"],
            runner_ids=[cluster.runner_id],
            file_system=g.SandboxFileSystemMount(mount_path="/data", size="32Mi"),
        ),
        timeout=60,
    )
    sandbox_id = started.sandbox_id
    gateway.wait(sandbox_id, lambda s: s == g.SANDBOX_STATUS_RUNNING)

    assert cluster.runner.proc is not None
    runner_pid = cluster.runner.proc.popen.pid
    os.kill(runner_pid, signal.SIGSTOP)  # the snapshot's archive cannot be read now
    try:
        answered = gateway.gateway.Stop(
            g.StopSandboxRequest(
                sandbox_id=sandbox_id,
                graceful_shutdown_seconds=3,
                file_system_snapshot_on_stop=True,
                wait_for_ready=False,
            ),
            timeout=10,
        )
        assert answered.success and answered.file_system_snapshot_id
        snapshot_id = answered.file_system_snapshot_id
        got = gateway.gateway.GetFileSystemSnapshot(
            g.GetFileSystemSnapshotRequest(file_system_snapshot_id=snapshot_id), timeout=10
        )
        assert got.status == g.FILE_SYSTEM_SNAPSHOT_STATUS_CREATING
        assert gateway.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_RUNNING
        cluster.control_plane.kill()
    finally:
        os.kill(runner_pid, signal.SIGCONT)

    cluster.restart_control_plane()
    gateway = cluster.gateway()  # a new channel to the new process
    ended = gateway.wait(sandbox_id, lambda s: s in TERMINAL, RECOVERY + 30)
    assert ended.sandbox_status != g.SANDBOX_STATUS_FAILED, ended
    snapshot = gateway.gateway.GetFileSystemSnapshot(
        g.GetFileSystemSnapshotRequest(file_system_snapshot_id=snapshot_id), timeout=10
    )
    assert snapshot.status == g.FILE_SYSTEM_SNAPSHOT_STATUS_FAILED
    assert "restarted" in snapshot.status_reason
