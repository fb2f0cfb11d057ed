"""The quota tally against the sum it replaced, over a real SQLite store.

A Start reads its organization's usage from a tally (``usage_tally.py``), not from a sum
over every record in memory. A tally that drifts would let an organization past its quota,
or refuse it below. These tests take sandboxes of two organizations through every change
a record goes through (placed, running, stopping, ended, deleted, a stale write, dropped
from memory after it ended, reloaded after a restart) and compare the tally with the sum
over the records at each step.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxd.config import load_config
from sandboxd.controlplane import sandbox_records
from sandboxd.controlplane.lifecycle import want_deleted, want_stopped
from sandboxd.controlplane.quotas import Usage
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import Desired, Observed, SandboxRecord, now
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.usage_tally import UsageTally
from sandboxd.store import Store

ORGS = ("org-a", "org-b")


def summed(records: list[SandboxRecord | None], organization: str) -> Usage:
    """The sum the tally replaced: unfinished, not deleted sandboxes of ``organization``."""
    mine = [
        r
        for r in records
        if r is not None
        and r.owner_org == organization
        and not r.terminal
        and r.desired is not Desired.DELETED
    ]
    return Usage(
        running_sandboxes=len(mine),
        cpu_millicores=sum(r.cpu_limit_millicores for r in mine),
        memory_bytes=sum(r.memory_limit_bytes for r in mine),
    )


def placed(sandbox_id: str, organization: str, cpu: int, memory: int) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id,
        "r1",
        owner_org=organization,
        spec=b"spec",
        cpu_limit_millicores=cpu,
        memory_limit_bytes=memory,
        created_at=now(),
    )


def observed(state: Observed) -> sandbox_records.Change:
    return lambda r: replace(r, observed=state, observed_generation=r.generation)


def test_the_tally_equals_the_sum_through_every_change_of_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ended sandboxes leave memory at once (not after 5 minutes); the tally never counted
    # them, and must not lose what it counts when they go.
    monkeypatch.setattr(sandbox_records, "RECENT_SECONDS", 0.0)

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        ids: list[str] = []

        def check(step: str) -> None:
            now_held = [records.cached(sid) for sid in ids]
            for org in ORGS:
                assert records.usage(org) == summed(now_held, org), (step, org)

        for i in range(8):
            sid = f"sb-{i}"
            ids.append(sid)
            await records.add(placed(sid, ORGS[i % 2], 250 * (i + 1), (i + 1) << 20))
            check(f"add {sid}")
        assert records.usage("org-a").running_sandboxes == 4
        assert records.usage("org-a").cpu_millicores == 250 * (1 + 3 + 5 + 7)
        for sid in ids[:6]:
            await records.observe_running(sid, observed(Observed.RUNNING))
            check(f"running {sid}")
        await records.update("sb-0", lambda r: want_stopped(r, 5))
        check("stopping sb-0")  # still counted: it has not ended
        await records.update("sb-0", observed(Observed.COMPLETED))
        check("sb-0 ended")
        await records.update("sb-1", observed(Observed.FAILED))
        check("sb-1 failed")
        await records.update("sb-2", want_deleted)
        check("sb-2 deleted")  # not counted from the moment it is wanted deleted
        deleted = records.cached("sb-2")
        assert deleted is not None
        await records.remove(deleted)
        check("sb-2 removed")
        # Another control plane on the same database wrote sb-3 first: our copy is stale.
        ours = records.cached("sb-3")
        assert ours is not None
        store.sandboxes.save(replace(ours, memory_limit_bytes=ours.memory_limit_bytes))
        await records.update("sb-3", lambda r: want_stopped(r, 5))
        check("stale write of sb-3, then its stop")
        await records.update("sb-4", observed(Observed.COMPLETED))
        await records.update("sb-5", observed(Observed.COMPLETED))
        assert records.cached("sb-4") is None, "an ended sandbox should have left memory"
        check("ended sandboxes dropped from memory")
        expected = {org: records.usage(org) for org in ORGS}
        assert expected["org-a"].running_sandboxes + expected["org-b"].running_sandboxes == 3
        # A restarted control plane rebuilds the tally from what it loads.
        again = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        await again.load()
        assert {org: again.usage(org) for org in ORGS} == expected
        records.close()
        again.close()

    asyncio.run(scenario())


def test_the_tally_follows_random_replacements_and_empties() -> None:
    """Random records replaced at random: the tally is always the sum of what is held."""
    rng = random.Random(9)
    tally = UsageTally()
    held: dict[str, SandboxRecord] = {}
    for step in range(3000):
        sid = f"sb-{rng.randrange(40)}"
        old = held.get(sid)
        if old is not None and rng.random() < 0.2:
            del held[sid]
            tally.replace(old, None)
        else:
            new = replace(
                placed(sid, rng.choice(ORGS), rng.randrange(4000), rng.randrange(1 << 30)),
                desired=rng.choice(list(Desired)),
                observed=rng.choice(list(Observed)),
            )
            held[sid] = new
            tally.replace(old, new)
        for org in ORGS:
            assert tally.usage(org) == summed(list(held.values()), org), step
    for sid, record in list(held.items()):
        del held[sid]
        tally.replace(record, None)
    assert all(tally.usage(org) == Usage() for org in ORGS)
    assert tally._totals == {}  # nothing kept for organizations with nothing left
