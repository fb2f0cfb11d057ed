"""The orphan commands refuse what they must, on a real control plane.

Listing, adopting and deleting real orphans of a real cluster, on SQLite and PostgreSQL, is
``tests/fault/test_empty_database.py``; here are the bad inputs and the permissions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from sandboxd.cli import main
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.support.processes import ControlPlaneProcess, admin_call


def cli(cp: ControlPlaneProcess, *args: str) -> Result:
    env = {"CWSANDBOX_API_KEY": cp.admin_key, "CWSANDBOX_BASE_URL": cp.url}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def orphans(cp: ControlPlaneProcess) -> list[dict[str, Any]]:
    result = cli(cp, "sandboxes", "orphans", "--json")
    assert result.exit_code == 0, result.output
    listed: list[dict[str, Any]] = json.loads(result.output)
    return listed


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
