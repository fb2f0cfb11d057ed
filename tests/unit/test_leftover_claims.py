"""The suite's leftover check finds claims nothing could ever give back (``tests/support``).

Why test a test helper: CI's only guard against a leaked subnet or id range is this check
(``SANDBOXD_REQUIRE_NO_LEFTOVERS=1``); one that finds nothing would pass every leak. Run on
claim and owner directories of its own, never the host's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import leftovers


def test_claims_of_owners_without_a_lock_file_and_empty_claims_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owners, idmap, pool = tmp_path / "owners", tmp_path / "idmap", tmp_path / "ipam" / "10.0_16"
    for directory in (owners, idmap, pool):
        directory.mkdir(parents=True)
    monkeypatch.setattr(leftovers, "OWNERS_DIR", str(owners))
    monkeypatch.setattr(leftovers, "IDMAP_DIR", str(idmap))
    monkeypatch.setattr(leftovers, "IPAM_DIR", str(tmp_path / "ipam"))
    (owners / "alive1").touch()  # a backend that runs, or a dead one the sweep will reap
    (pool / "1").write_text("alive1 sbx-1 0123456789   \n")
    (pool / "2").write_text("ghost sbx-2\n")
    (pool / "3").write_text("")
    (idmap / "4").write_text("sandboxd-alive1 sbx-1\n")
    (idmap / "5").write_text("sandboxd-ghost prepared\n")
    (idmap / "6").write_text("   \n")
    (tmp_path / "ipam" / ".shared-rules.lock").touch()  # locks are no claims
    (pool / ".lock").touch()
    assert leftovers.unreapable_claims() == {
        f"claim {pool / '2'} of ghost, which has no lock file",
        f"empty claim {pool / '3'}",
        f"claim {idmap / '5'} of sandboxd-ghost, which has no lock file",
        f"empty claim {idmap / '6'}",
    }
