"""A stop that waits for its snapshot survives a control plane that dies in between.

Why: v1's ``DeleteSandbox.snapshot_volumes`` and v1beta2's ``Stop`` with a snapshot (without
waiting for it) answer at once and stop the sandbox only when its snapshot is READY or
FAILED, in a task of this process. If the process dies in between, the snapshot row stays
CREATING and nothing would ever stop the sandbox the caller asked to stop. So the grace is
written to the sandbox's record before the snapshot starts (:func:`remember_grace`), and at
start-up every snapshot taken for a stop that was left unfinished is failed and its
sandbox stopped with that grace (:func:`stop_after_lost_snapshots`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import replace

from sandboxd.controlplane.lifecycle import want_stopped
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.snapshots.model import SnapshotRecord, SnapshotTrigger

__all__ = ["remember_grace", "stop_after_lost_snapshots"]

log = logging.getLogger(__name__)


async def remember_grace(records: SandboxRecords, sandbox_id: str, grace_seconds: int) -> None:
    """Keep the grace of a stop that waits for a snapshot, for a restart to use."""

    def with_grace(record: SandboxRecord) -> SandboxRecord | None:
        if record.terminal or record.stop_requested:
            return None
        if record.stop_grace_seconds == max(0, grace_seconds):
            return None
        return replace(record, stop_grace_seconds=max(0, grace_seconds))

    await records.update(sandbox_id, with_grace)


def _stopped(record: SandboxRecord, grace: int) -> SandboxRecord | None:
    return want_stopped(record, grace)


async def stop_after_lost_snapshots(
    records: SandboxRecords, failed: Sequence[SnapshotRecord]
) -> list[str]:
    """Stop the sandboxes whose stop waited for one of ``failed``; their ids."""
    stopped: list[str] = []
    for snapshot in failed:
        if snapshot.trigger is not SnapshotTrigger.STOP:
            continue
        sandbox_id = snapshot.source_sandbox_id
        record = await records.get(sandbox_id)
        if record is None or record.terminal or record.stop_requested:
            continue
        grace = record.stop_grace_seconds
        await records.update(sandbox_id, functools.partial(_stopped, grace=grace))
        log.warning(
            "sandbox %s: its stop waited for snapshot %s, which the restart ended unfinished; "
            "stopping it now (grace %d s)",
            sandbox_id,
            snapshot.snapshot_id,
            grace,
        )
        stopped.append(sandbox_id)
    return stopped
