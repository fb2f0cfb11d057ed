"""The ``volumes`` rows: keyed per organization, paged with filters, unfinished checks failed.

A real SQLite database migrated to head (``0008_volumes``): the same volume id in two
organizations is two rows, a second create of one id is refused, pages follow the id order
and the ``states``/``runner_ids`` filters, and the checks a dead control plane left
VALIDATING become ERROR at start-up with a reason that says what to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.store import Store
from sandboxd.store.volume_store import VolumeExists, VolumeStore
from sandboxd.volumes.model import VolumeRecord, VolumeState


def record(org: str, volume_id: str, runner: str = "r1", **more: object) -> VolumeRecord:
    return VolumeRecord(
        owner_org=org,
        volume_id=volume_id,
        runner_id=runner,
        namespace="default",
        claim_name=volume_id,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    return Store.sqlite(tmp_path / "cp.db").volumes


def test_ids_are_per_organization_and_unique_within_one(store: VolumeStore) -> None:
    store.add(record("a", "data", description="a's"))
    store.add(record("b", "data", description="b's"))
    with pytest.raises(VolumeExists):
        store.add(record("a", "data"))
    got_a, got_b = store.get("a", "data"), store.get("b", "data")
    assert got_a is not None and got_a.description == "a's"
    assert got_b is not None and got_b.description == "b's"
    assert store.get("c", "data") is None
    assert store.remove("a", "data") and not store.remove("a", "data")
    assert store.get("b", "data") is not None


def test_pages_follow_ids_and_filters(store: VolumeStore) -> None:
    for name, runner in (("v3", "r1"), ("v1", "r2"), ("v2", "r1"), ("v4", "r1")):
        store.add(record("a", name, runner))
    store.update("a", "v2", state=VolumeState.READY, state_reason="")
    assert [r.volume_id for r in store.page("a", "", 2)] == ["v1", "v2"]
    assert [r.volume_id for r in store.page("a", "v2", 10)] == ["v3", "v4"]
    assert [r.volume_id for r in store.page("a", "", 10, runner_ids=["r2"])] == ["v1"]
    ready = store.page("a", "", 10, states=[VolumeState.READY])
    assert [(r.volume_id, r.state) for r in ready] == [("v2", VolumeState.READY)]
    assert store.page("b", "", 10) == []


def test_checks_left_validating_become_errors(store: VolumeStore) -> None:
    store.add(record("a", "left", request_id="req-1"))
    store.add(record("a", "done", state=VolumeState.READY))
    assert store.fail_validating("restarted; validate again") == 1
    left = store.by_request("a", "req-1")
    assert left is not None and left.state is VolumeState.ERROR
    assert left.state_reason == "restarted; validate again"
    done = store.get("a", "done")
    assert done is not None and done.state is VolumeState.READY
