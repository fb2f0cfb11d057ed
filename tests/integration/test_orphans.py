"""Orphans on a real cluster: a control plane on an empty database destroys nothing.

Real ``sandboxd controlplane`` and ``sandboxd runner`` processes with the local backend and
real sandboxes. The first control plane is killed with SIGKILL and a second one starts on a
new, empty database at the same address, as after a lost data directory. The runner's
credential is unknown there, so it is refused; the operator re-admits it with a join token
for its id, and it reports its sandboxes. The new control plane has no record and no
tombstone of them: they are orphans, left running, listed by ``sandboxd sandboxes orphans``,
and then one is adopted (usable by the organization it was given to) and one is deleted
(gone from its runner).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from cwsandbox._proto import gateway_pb2 as g
from sandboxd._proto import admin_pb2
from sandboxd.cli import main
from tests.integration.test_hosts import prepare_image, sandbox_pid
from tests.support.gateway import Gateway
from tests.support.hosts import reap_runner_state
from tests.support.processes import ControlPlaneProcess, RunnerProcess, admin_call

RUNNER = "keeper-host"


def cli(cp: ControlPlaneProcess, *args: str) -> Result:
    env = {"CWSANDBOX_API_KEY": cp.admin_key, "CWSANDBOX_BASE_URL": cp.url}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def orphans(cp: ControlPlaneProcess) -> list[dict[str, Any]]:
    result = cli(cp, "sandboxes", "orphans", "--json")
    assert result.exit_code == 0, result.output
    listed: list[dict[str, Any]] = json.loads(result.output)
    return listed


def wait_orphans(cp: ControlPlaneProcess, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = orphans(cp)
        if len(found) == count:
            return found
        assert time.monotonic() < deadline, f"expected {count} orphans, have {found}"
        time.sleep(0.2)


@pytest.fixture
def runner_state(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root for the local backend")
    state = tmp_path / "runner"
    prepare_image(state)
    yield state
    reap_runner_state(state)


def test_a_control_plane_on_an_empty_database_keeps_and_hands_over_orphans(
    tmp_path: Path, runner_state: Path
) -> None:
    first = ControlPlaneProcess(data_dir=tmp_path / "first").start()
    runner = RunnerProcess(first, runner_state, runner_id=RUNNER)
    second: ControlPlaneProcess | None = None
    try:
        runner.start()
        with first.discovery() as discovery:
            discovery.wait_for(RUNNER, healthy=True, timeout=60)
        with Gateway(first) as gateway:
            kept = gateway.start(RUNNER)
            doomed = gateway.start(RUNNER)
            written = gateway.exec(kept, "sh", "-c", "echo before > /tmp/mark && echo ok")
            assert written.ok, written
        first.proc.kill()  # type: ignore[union-attr]
        second = ControlPlaneProcess(data_dir=tmp_path / "second", port=first.port).start()
        # The runner's credential means nothing to the new database: it is refused and exits
        # (its sandboxes stay up), and the operator re-admits it with a token for its id.
        assert runner.proc is not None
        assert runner.proc.popen.wait(timeout=60) == 3, runner.proc.output
        runner.control_plane = second
        runner.join_token = second.create_join_token(runner_id=RUNNER)
        runner.start()
        with second.discovery() as discovery:
            discovery.wait_for(RUNNER, healthy=True, timeout=60)
        found = {o["sandbox_id"]: o for o in wait_orphans(second, 2)}
        assert set(found) == {kept, doomed}
        for orphan in found.values():
            assert (orphan["runner_id"], orphan["phase"]) == (RUNNER, "running")
            assert orphan["runner_cluster_id"]  # the first control plane's cluster
            assert orphan["first_seen"] and orphan["last_seen"]
        # Nothing was destroyed: both still have processes on this machine.
        sandbox_pid(kept), sandbox_pid(doomed)

        member = second.create_key("acme")
        with Gateway(second, member) as acme:
            with pytest.raises(grpc.RpcError) as unknown:
                acme.get(kept)
            assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
            adopted = cli(second, "sandboxes", "adopt", kept, "--org", "acme")
            assert adopted.exit_code == 0, adopted.output
            assert f"adopted {kept} on runner {RUNNER}" in adopted.output
            got = acme.get(kept)
            assert (got.sandbox_status, got.runner_id) == (g.SANDBOX_STATUS_RUNNING, RUNNER)
            # The file written through the first control plane reads back through the second.
            read = acme.exec_until_ok(kept, "cat", "/tmp/mark")
            assert read.stdout == b"before\n"

            deleted = cli(second, "sandboxes", "delete", doomed)
            assert deleted.exit_code == 0, deleted.output
            assert f"deleted orphan {doomed} on runner {RUNNER}" in deleted.output
            assert orphans(second) == []
            with pytest.raises(AssertionError):
                sandbox_pid(doomed)  # its processes are gone from the machine

            # The adopted sandbox is an ordinary one now: its owner deletes it.
            acme.delete(kept)
            with pytest.raises(grpc.RpcError) as gone:
                acme.get(kept)
            assert gone.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(AssertionError):
            sandbox_pid(kept)
    finally:
        if runner.proc is not None and runner.proc.popen.poll() is None:
            runner.stop()
        if second is not None:
            second.stop()
        if first.proc is not None and first.proc.popen.poll() is None:
            first.stop()


def test_orphan_commands_refuse_bad_ids_and_unknown_orphans(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    try:
        assert orphans(cp) == []
        missing = cli(cp, "sandboxes", "adopt", "sb-nothing", "--org", "acme")
        assert missing.exit_code == 1
        assert "orphan 'sb-nothing' not found" in missing.output
        missing = cli(cp, "sandboxes", "delete", "sb-nothing")
        assert missing.exit_code == 1 and "not found" in missing.output
        bad_org = cli(cp, "sandboxes", "adopt", "sb-x", "--org", "")
        assert bad_org.exit_code == 2 and "--org" in bad_org.output
        too_long = cli(cp, "sandboxes", "delete", "x" * 65)
        assert too_long.exit_code == 2 and "SANDBOX_ID" in too_long.output
        # The API itself names the field for a caller that skips the CLI's checks.
        with pytest.raises(grpc.RpcError) as caught:
            cp.admin(
                "AdoptOrphan",
                admin_pb2.AdoptOrphanRequest(sandbox_id="sb-x", organization="bad org!"),
                admin_pb2.AdoptOrphanResponse,
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "organization" in (caught.value.details() or "")
        # Members may not see or decide about orphans.
        member = cp.create_key("acme")
        with pytest.raises(grpc.RpcError) as denied:
            admin_call(
                cp.target,
                member,
                "ListOrphans",
                admin_pb2.ListOrphansRequest(),
                admin_pb2.ListOrphansResponse,
            )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        cp.stop()
