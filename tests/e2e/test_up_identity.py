"""``sandboxd up``'s own identity: its administrator key and its runner's credential persist."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cwsandbox import list_runners
from tests.support.processes import all_in_one


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_keeps_its_key_and_runner_credential_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "up"
    with all_in_one(data, "--runner-id", "laptop") as first:
        assert first.api_key.startswith("sbxk_")
        assert first.api_key == (data / "admin-key").read_text().strip()
        credential = (data / "runner" / "runner-credential").read_text()
        assert "laptop" in credential
        lines = first.proc.output.splitlines()
        # The key comes before the ready line, so a script waiting for that line has both.
        assert lines.index(f"CWSANDBOX_API_KEY={first.api_key}") < lines.index(
            f"CWSANDBOX_BASE_URL={first.base_url}"
        )
    assert (mode(data), mode(data / "admin-key"), mode(data / "controlplane.db")) == (
        0o700,
        0o600,
        0o600,
    )
    assert mode(data / "runner" / "runner-credential") == 0o600
    with all_in_one(data, "--runner-id", "laptop") as second:
        assert second.api_key == first.api_key
        # The runner rejoined with its stored credential (no new one was issued).
        assert (data / "runner" / "runner-credential").read_text() == credential
        monkeypatch.setenv("CWSANDBOX_API_KEY", second.api_key)
        runners = list_runners(base_url=second.base_url)
        assert [(r.runner_id, r.healthy) for r in runners] == [("laptop", True)]
