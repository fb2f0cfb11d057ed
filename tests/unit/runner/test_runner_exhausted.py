"""A runner out of disk, subnets or user id ranges says so in a way that counts against it.

Why it matters: the control plane does not count these, so a runner out of one fails every
start placed on it, and each failure gives the reservation back, leaving it the least loaded
runner: placement sent it every Start of the cluster. Each source raises ``RunnerExhausted``
naming the resource, and the runner answers ``RESOURCE_EXHAUSTED`` with the reason the
control plane's start backoff blames the runner for. (The end-to-end story, with real
runners, is ``tests/integration/test_runner_exhaustion.py``.)
"""

from __future__ import annotations

import errno
from pathlib import Path

import grpc
import pytest

from sandboxd.backends.errors import RunnerExhausted, SandboxStartError
from sandboxd.backends.local.disk_template import DiskError, DiskFull, disk_error
from sandboxd.backends.local.host_commands import HostNetworkFailed, NetworkError
from sandboxd.backends.local.network import NetworkManager
from sandboxd.backends.local.userns import IdRangeError, IdRangePool
from sandboxd.controlplane.runner_link import failure_error
from sandboxd.controlplane.start_backoff import blames_runner
from sandboxd.runner import failures
from sandboxd_protocol.sandboxd_v1 import runner_pb2


def _counted(failure: runner_pb2.Failure) -> bool:
    """Whether the control plane's start backoff holds this failure against the runner."""
    return blames_runner(failure_error(failure))  # as the reconciler gets it from the link


def test_an_exhausted_runner_answers_resource_exhausted_naming_the_resource() -> None:
    exc = RunnerExhausted("disk", "the runner's disk is full: 3 MiB free in /data/disk")
    failure = failures.from_backend_error(exc, "sb-1")
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert failure.reason == "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"
    assert failure.message == (
        "this runner has no room for the sandbox: the runner's disk is full: "
        "3 MiB free in /data/disk"
    )
    assert dict(failure.metadata) == {"sandbox_id": "sb-1", "resource": "disk"}
    assert _counted(failure)


def test_any_other_start_error_still_does_not_count_against_the_runner() -> None:
    """A command that does not exist fails on a perfectly good runner: no backoff for it."""
    failure = failures.from_backend_error(SandboxStartError("no such file: /bin/nope"), "sb-2")
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not _counted(failure)


def test_a_full_disk_is_the_runners_exhaustion_and_still_a_disk_error() -> None:
    full = disk_error("a writable layer of 1024 bytes", OSError(errno.ENOSPC, "No space left"))
    assert isinstance(full, DiskFull) and isinstance(full, DiskError)
    assert isinstance(full, RunnerExhausted) and full.resource == "disk"
    assert str(full) == "making a writable layer of 1024 bytes: [Errno 28] No space left"
    other = disk_error("a writable layer of 1024 bytes", OSError(errno.EIO, "I/O error"))
    assert not isinstance(other, RunnerExhausted)  # a broken disk is not a full one


def test_the_last_user_id_range_taken_is_the_runners_exhaustion(tmp_path: Path) -> None:
    pool = IdRangePool("exhaustion-test", slots=1, claim_dir=str(tmp_path))
    pool.allocate("sb-1")
    with pytest.raises(IdRangeError) as caught:
        pool.allocate("sb-2")
    assert isinstance(caught.value, RunnerExhausted)
    assert caught.value.resource == "user_ids"
    assert str(caught.value) == "all 1 user id ranges are in use"


def test_the_last_subnet_taken_is_the_runners_exhaustion(tmp_path: Path) -> None:
    net = NetworkManager("exhaustion-test", pool="10.214.9.0/29", ipam_dir=str(tmp_path))
    net.allocate("sb-1")  # a /29 holds one sandbox /30 (the first is never handed out)
    with pytest.raises(NetworkError) as caught:
        net.allocate("sb-2")
    assert isinstance(caught.value, RunnerExhausted)
    assert caught.value.resource == "network"
    assert str(caught.value) == "network pool 10.214.9.0/29 exhausted"


def test_a_host_that_cannot_make_networks_is_the_runners_fault_and_still_a_network_error() -> None:
    """A broken host firewall fails every create with egress on that runner: counted (the
    request cannot cause it: ``test_local_egress.py`` sends the worst allowlist it may)."""
    exc = HostNetworkFailed("the host could not make the sandbox's network: iptables-restore: x")
    assert isinstance(exc, NetworkError)  # the network code's own handling still applies
    failure = failures.from_backend_error(exc, "sb-3")
    assert failure.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failure.reason == "CWSANDBOX_BACKEND_UNAVAILABLE"
    assert failure.message == str(exc)
    assert _counted(failure)
