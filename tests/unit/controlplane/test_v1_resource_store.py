"""The v1 rows beside sandbox records: request ids unique per organization, stale rows go.

Real SQLite database with the real migrations (``Store.sqlite``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.controlplane.sandbox_model import SandboxRecord, now
from sandboxd.store import Store
from sandboxd.store.v1_resources import RequestIdTaken, V1Resource


def row(sandbox_id: str, org: str = "a", request_id: str = "r-1") -> V1Resource:
    return V1Resource(
        sandbox_id=sandbox_id,
        owner_org=org,
        request_id=request_id,
        spec=b"\x08\x01",
        request_digest="d" * 64,
        display_name="",
        created_at=now(),
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.sqlite(tmp_path / "cp.db")


def test_a_request_id_is_unique_per_organization(store: Store) -> None:
    for sandbox_id, org in (("sb-1", "a"), ("sb-2", "b")):
        store.sandboxes.insert(SandboxRecord(sandbox_id=sandbox_id, runner_id="r", owner_org=org))
    store.v1.add(row("sb-1", "a"))
    store.v1.add(row("sb-2", "b"))  # another organization may use the same id
    with pytest.raises(RequestIdTaken):
        store.v1.add(row("sb-3", "a"))
    store.v1.add(row("sb-4", "a", request_id=""))  # no id: never a conflict
    store.v1.add(row("sb-5", "a", request_id=""))
    found = store.v1.by_request("a", "r-1")
    assert found is not None and found.sandbox_id == "sb-1"
    assert found.request_digest == "d" * 64
    assert store.v1.by_request("c", "r-1") is None


def test_rows_of_sandboxes_that_are_gone_are_forgotten(store: Store) -> None:
    record = SandboxRecord(sandbox_id="sb-1", runner_id="r", owner_org="a")
    store.sandboxes.insert(record)
    store.sandboxes.insert(SandboxRecord(sandbox_id="sb-2", runner_id="r", owner_org="a"))
    store.v1.add(row("sb-1"))
    store.v1.add(row("sb-2", request_id="r-2"))
    store.v1.add(row("sb-gone", request_id="r-3"))  # its record never made it
    assert store.v1.prune() == 1
    store.sandboxes.remove(record, now())
    assert store.v1.by_request("a", "r-1") is None  # the id may be used again
    store.v1.add(row("sb-6"))
    assert set(store.v1.get_many(["sb-1", "sb-2", "sb-6"])) == {"sb-2", "sb-6"}
