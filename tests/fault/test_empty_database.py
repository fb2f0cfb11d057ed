"""A control plane starts on an empty database while its runner holds sandboxes.

This is what a wrong ``--database-url``, a lost data directory or a restore from the wrong
backup looks like. Nothing may be destroyed: the control plane has no evidence (no
tombstone) that the sandboxes should go. The runner, whose credential the new database does
not know, is refused and its sandboxes keep running; re-admitted with a join token of the
new control plane, it reports them, and they are listed as orphans
(``sandboxd sandboxes orphans``), which an administrator may adopt into an organization
(``sandboxd sandboxes adopt``) or destroy (``sandboxd sandboxes delete``). Pointed at the old
database again, everything is as it was.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from sandboxd.runner.cluster_id import load_cluster_id
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    Cluster,
    rpc_error,
    sandbox_pids,
    sandboxd_admin,
    wait_until,
)
from tests.support.processes import ControlPlaneProcess

ORPHAN_FIELDS = {
    "sandbox_id",
    "runner_id",
    "phase",
    "exit_code",
    "reason",
    "runner_cluster_id",
    "first_seen",
    "last_seen",
}
ORPHANS_NOTED = "holds {n} sandbox(es) this control plane has no record of"
EXIT_REJECTED = 3  # sandboxd.runner.cli.EXIT_REJECTED


def switch_runner(cluster: Cluster, control_plane: ControlPlaneProcess, token: str) -> None:
    """Restart the runner (same state directory) against ``control_plane`` with ``token``."""
    runner = cluster.runner
    if runner.proc is not None:
        runner.kill()
    runner.control_plane = control_plane
    runner.join_token = token
    runner.start()
    cluster.control_plane = control_plane
    cluster.wait_health(True, RECOVERY)


def start_on_empty_database(cluster: Cluster, fresh_url: str) -> ControlPlaneProcess:
    """Kill the control plane; start another on ``fresh_url`` and a new data directory, on
    the same address. The runner, refused there, exits; its sandboxes must not."""
    old = cluster.control_plane
    old.kill()
    new = cluster.new_control_plane(cluster.root / "cp-empty", fresh_url, port=old.port)
    new.start()
    runner = cluster.runner
    assert runner.proc is not None
    # Its credential and join token belong to the old database: it is refused, for good.
    popen = runner.proc.popen
    wait_until("the refused runner exits", lambda: popen.poll() is not None, 30)
    assert popen.returncode == EXIT_REJECTED, runner.proc.output[-2000:]
    return new


def orphans(control_plane: ControlPlaneProcess) -> list[dict[str, Any]]:
    done = sandboxd_admin(control_plane, "sandboxes", "orphans", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert isinstance(listed, list), listed
    return listed


def test_empty_database_destroys_nothing_and_the_old_one_takes_over_again(
    cluster: Cluster, fresh_database_url: str
) -> None:
    gateway = cluster.gateway()
    sandboxes = [gateway.start(cluster.runner_id) for _ in range(2)]
    gateway.write_file(sandboxes[0], "/tmp/mark.txt", b"from the old database\n")
    old = cluster.control_plane

    new = start_on_empty_database(cluster, fresh_database_url)
    assert all(sandbox_pids(s) for s in sandboxes)  # refused runner, sandboxes untouched

    switch_runner(cluster, new, new.join_token)
    proc = new.proc
    assert proc is not None
    marker = ORPHANS_NOTED.format(n=len(sandboxes))
    wait_until("the new control plane notes the orphans", lambda: marker in proc.output, 10)
    fresh = cluster.gateway()
    for sandbox_id in sandboxes:  # unknown to the new database: not found, not destroyed
        error = rpc_error(lambda sid=sandbox_id: fresh.get(sid))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        assert sandbox_pids(sandbox_id), f"{sandbox_id} was destroyed"
    assert fresh.list_all(include_stopped=True) == []

    # Back to the old database: a token pinned to the runner re-admits it (its id is taken
    # there by its old credential), and every sandbox is there and usable.
    new.kill()
    old.start()
    pinned = old.create_join_token(runner_id=cluster.runner_id, ttl_seconds=600)
    switch_runner(cluster, old, pinned)
    back = cluster.gateway()
    for sandbox_id in sandboxes:
        assert back.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_RUNNING
        assert back.exec(sandbox_id, "true").ok
    assert back.read_file(sandboxes[0], "/tmp/mark.txt") == b"from the old database\n"


def test_orphans_are_listed_adopted_and_deleted_by_an_administrator(
    cluster: Cluster, fresh_database_url: str
) -> None:
    gateway = cluster.gateway()
    adopted, deleted = gateway.start(cluster.runner_id), gateway.start(cluster.runner_id)
    gateway.write_file(adopted, "/tmp/mark.txt", b"kept through adoption\n")
    old_cluster_id = load_cluster_id(cluster.runner.state_dir)
    assert old_cluster_id

    new = start_on_empty_database(cluster, fresh_database_url)
    switch_runner(cluster, new, new.join_token)

    def both_listed() -> list[dict[str, Any]] | None:
        found = orphans(new)
        return found if len(found) >= 2 else None

    listed = wait_until("both sandboxes listed as orphans", both_listed, 10)
    by_id = {o["sandbox_id"]: o for o in listed}
    assert set(by_id) == {adopted, deleted}, listed
    for orphan in by_id.values():
        assert set(orphan) == ORPHAN_FIELDS, orphan
        assert orphan["runner_id"] == cluster.runner_id
        assert orphan["phase"] == "running"
        assert orphan["exit_code"] is None
        assert orphan["runner_cluster_id"] == old_cluster_id
        first = datetime.fromisoformat(orphan["first_seen"].replace("Z", "+00:00"))
        last = datetime.fromisoformat(orphan["last_seen"].replace("Z", "+00:00"))
        assert first <= last

    # Adopt: it becomes a sandbox of organization acme, for acme and nobody else.
    done = sandboxd_admin(new, "sandboxes", "adopt", adopted, "--org", "acme")
    assert done.returncode == 0, done.stderr
    acme = cluster.gateway(new.create_key("acme"))
    other = cluster.gateway(new.create_key("other"))
    got = acme.get(adopted)
    assert (got.sandbox_status, got.runner_id) == (g.SANDBOX_STATUS_RUNNING, cluster.runner_id)
    assert acme.read_file(adopted, "/tmp/mark.txt") == b"kept through adoption\n"
    assert acme.exec(adopted, "cat", "/tmp/mark.txt").stdout == b"kept through adoption\n"
    error = rpc_error(lambda: other.get(adopted))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error
    assert adopted not in {o["sandbox_id"] for o in orphans(new)}
    acme.stop(adopted)
    got = acme.get(adopted)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_COMPLETED, "stopped")
    wait_until(f"{adopted} stopped on the host", lambda: not sandbox_pids(adopted), 10)

    # Delete: destroyed on its runner, and no longer an orphan.
    assert sandbox_pids(deleted)
    done = sandboxd_admin(new, "sandboxes", "delete", deleted)
    assert done.returncode == 0, done.stderr
    wait_until(f"{deleted} destroyed on the host", lambda: not sandbox_pids(deleted), 15)
    assert orphans(new) == []
    backend_dir = Path(cluster.runner.state_dir, "backend", "sandboxes", deleted)
    wait_until(f"{deleted}'s state removed", lambda: not backend_dir.exists(), 10)
