"""Orphans: sandboxes runners hold that this control plane has no record of.

Why they exist: a control plane started on an empty, restored or another database must not
destroy workloads it cannot prove it deleted (DESIGN.md rule 11). Runners report everything
they hold; what no record here owns and no tombstone names is kept as an orphan, left
running, and shown to administrators, who decide: *adopt* it (it becomes an ordinary
sandbox of an organization, readable, stoppable and deletable through the API) or *delete*
it (a tombstone is written first, so the deletion also happens if its runner is away now).
"""

from __future__ import annotations

import logging

import grpc

from sandboxd.controlplane.reconciler import STOP_MARGIN_SECONDS
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import ENDED, Desired, Observed, SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.errors import ApiError, invalid_argument, not_found
from sandboxd.identity.model import organization_problem
from sandboxd.store.sandbox_store import Orphan
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)

MAX_ORPHAN_ID_LENGTH = 64
"""Sandbox ids longer than this are never stored, so never orphans."""
DELETE_SECONDS = STOP_MARGIN_SECONDS + 10


def _check_id(sandbox_id: str) -> None:
    if not sandbox_id.strip():
        raise invalid_argument("sandbox_id", "must not be empty")
    if len(sandbox_id) > MAX_ORPHAN_ID_LENGTH:
        raise invalid_argument("sandbox_id", f"must be at most {MAX_ORPHAN_ID_LENGTH} characters")


def adopted_record(orphan: Orphan, organization: str) -> SandboxRecord:
    """The record an adopted orphan becomes.

    It has no spec (only its runner knows how it was started), so it is never started
    here; it reserves nothing (its requests are unknown), and reads as its runner last
    reported it until the runner reports again.
    """
    try:
        observed = Observed(orphan.phase)
    except ValueError:
        observed = Observed.NONE
    ended = orphan.last_seen if observed in ENDED else None
    return SandboxRecord(
        sandbox_id=orphan.sandbox_id,
        runner_id=orphan.runner_id,
        owner_org=organization,
        spec=None,
        # A paused orphan stays paused until its new owner resumes it.
        desired=Desired.PAUSED if observed is Observed.PAUSED else Desired.RUNNING,
        observed=observed,
        exit_code=orphan.exit_code,
        reason=orphan.reason,
        created_at=orphan.first_seen,
        started_at=orphan.first_seen if observed is not Observed.NONE else None,
        ended_at=ended,
    )


class Orphans:
    """List, adopt and delete orphans (the admin API's half of the orphan model)."""

    def __init__(self, records: SandboxRecords, registry: RunnerRegistry) -> None:
        self._records = records
        self._registry = registry

    async def list(self, runner_id: str = "") -> list[Orphan]:
        """Every orphan, or ``runner_id``'s, by runner then sandbox id."""
        found = await self._records.orphans()
        return [o for o in found if not runner_id or o.runner_id == runner_id]

    async def _find(self, sandbox_id: str) -> Orphan:
        _check_id(sandbox_id)
        for orphan in await self._records.orphans():
            if orphan.sandbox_id == sandbox_id:
                return orphan
        raise not_found("orphan", sandbox_id)

    async def adopt(self, sandbox_id: str, organization: str) -> SandboxRecord:
        """Make an orphan a sandbox of ``organization``; NOT_FOUND if there is none."""
        problem = organization_problem(organization)
        if problem:
            raise invalid_argument("organization", problem)
        orphan = await self._find(sandbox_id)
        record = adopted_record(orphan, organization)
        try:
            adopted = await self._records.adopt(record)
        except ValueError as exc:  # a sandbox here already has the id (never by accident)
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS, str(exc), reason="CWSANDBOX_ALREADY_EXISTS"
            ) from None
        if not adopted:  # adopted or deleted by someone else meanwhile
            raise not_found("orphan", sandbox_id)
        log.warning(
            "orphan %s on runner %s adopted by organization %s",
            sandbox_id,
            orphan.runner_id,
            organization,
        )
        return record

    async def delete(self, sandbox_id: str) -> tuple[Orphan, bool]:
        """Destroy an orphan: tombstone first, then tell its runner if it is connected.

        Returns the orphan and whether its runner confirmed the deletion now. When it did not
        (away, or it did not answer), the tombstone makes the runner's next registration or
        snapshot destroy it.
        """
        _check_id(sandbox_id)
        orphan = await self._records.forget_orphan(sandbox_id)
        if orphan is None:
            raise not_found("orphan", sandbox_id)
        log.warning(
            "orphan %s on runner %s deleted by an administrator", sandbox_id, orphan.runner_id
        )
        runner = self._registry.get(orphan.runner_id)
        if runner is None or runner.link is None:
            return orphan, False
        command = runner_pb2.Command(delete=runner_pb2.DeleteSandbox(sandbox_id=sandbox_id))
        try:
            await runner.link.call(command, timeout=DELETE_SECONDS)
        except ApiError as error:
            return orphan, error.reason == "CWSANDBOX_SANDBOX_NOT_FOUND"  # gone already
        return orphan, True


__all__ = ["Orphans", "adopted_record"]
