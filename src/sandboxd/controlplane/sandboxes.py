"""Sandbox records: the control plane's view of every sandbox, live and terminal.

Why records live here and not on runners: clients poll ``Get`` (v1beta2.md §4.3) and expect a
terminal record to stay readable after ``Stop``; a runner may be gone by then. Every change is
written through to the store on one ordered worker thread, so a control-plane restart keeps
final statuses and exit codes.

Every record names its owner organization (``owner_org``); records stored before sandboxes had
owners belong to the administrators' organization. Who may see a record is decided in one
place, :meth:`sandboxd.controlplane.lifecycle.Lifecycle.record`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cwsandbox._proto import gateway_pb2
from sandboxd._proto import runner_pb2
from sandboxd.controlplane.quotas import Usage
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.identity.model import ADMIN_ORG
from sandboxd.store import Store

S = gateway_pb2
TERMINAL = frozenset(
    {S.SANDBOX_STATUS_COMPLETED, S.SANDBOX_STATUS_FAILED, S.SANDBOX_STATUS_TERMINATED}
)


def new_sandbox_id() -> str:
    """Ids sort by creation time, so List pages come out oldest first."""
    return f"sb-{time.time_ns() // 1_000_000:011x}{os.urandom(4).hex()}"


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


@dataclass
class SandboxRecord:
    """Everything Get and List report about one sandbox."""

    sandbox_id: str
    status: int
    runner_id: str
    runner_group_id: str
    profile_name: str
    image: str
    tags: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    status_reason: str = ""
    exit_code: int | None = None
    applied_ingress_mode: str = ""
    applied_egress_mode: str = ""
    service_address: str = ""
    exposed_ports: list[int] = field(default_factory=list)
    # What the sandbox reserves from its runner's capacity (its resource requests).
    reserved_cpu_millicores: int = 0
    reserved_memory_bytes: int = 0
    reserved_gpu_count: int = 0
    stop_requested: bool = False
    # The organization whose key started it: only that organization (and admins) see it.
    owner_org: str = ADMIN_ORG
    # Its CPU and memory limits, which count against the owner's quotas while it lives.
    cpu_limit_millicores: int = 0
    memory_limit_bytes: int = 0

    @property
    def terminal(self) -> bool:
        """COMPLETED, FAILED or TERMINATED: nothing will change any more."""
        return self.status in TERMINAL

    def to_document(self) -> dict[str, Any]:
        """JSON-ready form for the store."""
        document = dataclasses.asdict(self)
        for key in ("created_at", "started_at", "ended_at"):
            value = document[key]
            document[key] = value.isoformat() if value else None
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> SandboxRecord:
        """Inverse of :meth:`to_document`."""
        values = dict(document)
        for key in ("created_at", "started_at", "ended_at"):
            if values.get(key):
                values[key] = datetime.fromisoformat(values[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class SandboxTable:
    """In-memory sandbox records, written through to the store in order."""

    def __init__(self, store: Store, registry: RunnerRegistry) -> None:
        self._store = store
        self._registry = registry
        self._records: dict[str, SandboxRecord] = {}
        self._sorted_ids: list[str] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-store")
        self._changed = asyncio.Condition()

    def restore(self) -> None:
        """Load stored records; live ones keep reserving capacity on their runner."""
        for document in self._store.load_sandboxes():
            record = SandboxRecord.from_document(document)
            self._insert(record)
            if not record.terminal:
                self._registry.reserve(record.runner_id, record.sandbox_id, _reservation(record))

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        """The record with this id, if any."""
        return self._records.get(sandbox_id)

    def iter_from(self, after: str = "") -> Iterator[SandboxRecord]:
        """Records in id (creation) order, strictly after ``after``."""
        start = bisect.bisect_right(self._sorted_ids, after) if after else 0
        for sandbox_id in self._sorted_ids[start:]:
            record = self._records.get(sandbox_id)
            if record is not None:
                yield record

    def usage(self, organization: str) -> Usage:
        """What ``organization``'s live (not yet ended) sandboxes take, for its quotas."""
        live = [r for r in self._records.values() if r.owner_org == organization and not r.terminal]
        return Usage(
            running_sandboxes=len(live),
            cpu_millicores=sum(r.cpu_limit_millicores for r in live),
            memory_bytes=sum(r.memory_limit_bytes for r in live),
        )

    def live_on(self, runner_id: str) -> list[SandboxRecord]:
        """Non-terminal sandboxes placed on a runner."""
        return [r for r in self._records.values() if r.runner_id == runner_id and not r.terminal]

    async def add(self, record: SandboxRecord) -> None:
        """Record a newly placed sandbox and reserve its resources."""
        self._insert(record)
        self._registry.reserve(record.runner_id, record.sandbox_id, _reservation(record))
        await self._persist(record)

    async def update(self, record: SandboxRecord, **changes: Any) -> SandboxRecord:
        """Apply changes, release capacity on a terminal status, persist and notify waiters."""
        if record.terminal and "status" in changes:
            changes.pop("status")  # terminal is final
            changes.pop("exit_code", None)
        for key, value in changes.items():
            setattr(record, key, value)
        if record.terminal:
            record.ended_at = record.ended_at or now()
            self._registry.release(record.runner_id, record.sandbox_id)
        await self._persist(record)
        async with self._changed:
            self._changed.notify_all()
        return record

    async def remove(self, record: SandboxRecord) -> None:
        """Forget a sandbox entirely."""
        self._records.pop(record.sandbox_id, None)
        index = bisect.bisect_left(self._sorted_ids, record.sandbox_id)
        if index < len(self._sorted_ids) and self._sorted_ids[index] == record.sandbox_id:
            del self._sorted_ids[index]
        self._registry.release(record.runner_id, record.sandbox_id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._store.delete_sandbox, record.sandbox_id)

    async def wait_status_change(self, record: SandboxRecord, timeout: float) -> None:
        """Return when the record's status changes, or after ``timeout`` seconds."""
        status = record.status
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: record.status != status)

    async def wait_terminal(self, record: SandboxRecord, timeout: float) -> bool:
        """Wait until the record is terminal; False on timeout."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: record.terminal)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Finish pending writes."""
        self._writer.shutdown(wait=True)

    def _insert(self, record: SandboxRecord) -> None:
        if record.sandbox_id not in self._records:
            bisect.insort(self._sorted_ids, record.sandbox_id)
        self._records[record.sandbox_id] = record

    async def _persist(self, record: SandboxRecord) -> None:
        document = record.to_document()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._writer, self._store.save_sandbox, record.sandbox_id, document
        )


def _reservation(record: SandboxRecord) -> runner_pb2.Reservation:
    return runner_pb2.Reservation(
        cpu_millicores=record.reserved_cpu_millicores,
        memory_bytes=record.reserved_memory_bytes,
        gpu_count=record.reserved_gpu_count,
    )
