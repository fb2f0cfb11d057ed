"""A volume being validated when the control plane is SIGKILLed is not left VALIDATING for ever.

``CreateVolume`` records the volume VALIDATING and asks its runner to make the directory.
Here the runner is frozen (SIGSTOP) so the answer cannot come, the control plane is
SIGKILLed, the runner thawed and the control plane started again: the volume must read
ERROR with a reason that says to validate it again, and ``ValidateVolume`` must then make it
READY; its data directory is the runner's, so nothing was lost.
"""

from __future__ import annotations

import os
import signal

from sandboxd_protocol.v1 import volume_pb2 as p
from tests.support.faults import RECOVERY, Cluster
from tests.support.v1_calls import rpc


def test_a_volume_validating_across_a_control_plane_kill(cluster: Cluster) -> None:
    assert cluster.runner.proc is not None
    runner_pid = cluster.runner.proc.popen.pid
    source = p.PvcVolumeSource(
        runner_id=cluster.runner_id, namespace="default", claim_name="killed"
    )
    request = p.CreateVolumeRequest(volume=p.Volume(volume_id="vk1", spec=p.VolumeSpec(pvc=source)))
    os.kill(runner_pid, signal.SIGSTOP)  # the runner cannot confirm the directory now
    try:
        with cluster.control_plane.channel() as channel:
            created = rpc(channel, "CreateVolume", request)
            assert created.status.state == p.VOLUME_STATE_VALIDATING
        cluster.control_plane.kill()
    finally:
        os.kill(runner_pid, signal.SIGCONT)

    cluster.restart_control_plane()
    cluster.wait_health(True, RECOVERY)
    with cluster.control_plane.channel() as channel:
        got = rpc(channel, "GetVolume", p.GetVolumeRequest(volume_id="vk1"))
        assert got.status.state == p.VOLUME_STATE_ERROR, got
        assert "validate" in got.status.state_reason.lower(), got.status.state_reason

        # The runner may not have made the directory before the kill: validating the volume
        # whose first check never finished completes its create.
        again = rpc(channel, "ValidateVolume", p.ValidateVolumeRequest(volume_id="vk1"))
        assert again.status.state == p.VOLUME_STATE_READY, again.status.state_reason
