"""Volume operations for any public protocol: register, read, check, change, forget, mount.

How a volume comes to be: Create stores the registration VALIDATING and asks its runner
(``PrepareVolume``, create) to make the directory; the runner's answer makes it READY, or
ERROR with the reason. ValidateVolume asks again (find, not make) and waits for the answer.

Organizations: every lookup is by (caller's organization, id), so another organization's
volume is exactly a missing one (``CWSANDBOX_VOLUME_NOT_FOUND``); ids are names each
organization chooses.

Sandboxes: a create that mounts volumes is resolved here first (:meth:`Volumes.mounts_for`):
each volume must be the organization's and READY, all on one runner (which the sandbox is
then pinned to; another pin is ``CWSANDBOX_VOLUME_PLACEMENT_CONFLICT``), and the runner
checks each mount's sub-path before anything is placed, so a symlink a sandbox planted in
the volume is refused as bad input naming the mount. Which sandboxes use a volume is read
from the live records of its runner (their specs name the volume), so no second table can
drift; a delete of a volume that one uses is ``CWSANDBOX_VOLUME_IN_USE`` unless forced.
Deletes and mounting creates take one lock, so a delete cannot slip between a create's
check and its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from sandboxd.controlplane.backend_support import support_of
from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.store_errors import store_unavailable
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.store.volume_store import VolumeExists, VolumeStore
from sandboxd.volumes.model import MountWish, VolumeMountPlan, VolumeRecord, VolumeState, now
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
VALIDATE_SECONDS = 20.0


def volume_error(code: grpc.StatusCode, reason: str, message: str, volume_id: str) -> ApiError:
    """An error of the volume contract (``CWSANDBOX_VOLUME_*``, ``volume_id`` in metadata)."""
    return ApiError(
        code, message, reason=f"CWSANDBOX_VOLUME_{reason}", metadata={"volume_id": volume_id}
    )


def volume_not_found(volume_id: str) -> ApiError:
    """No volume with this id that the caller may see (missing and foreign look alike)."""
    return volume_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"volume {volume_id!r} not found", volume_id
    )


def joined(*parts: str) -> str:
    """Relative paths joined, empty ones left out."""
    return "/".join(p for p in parts if p)


class Volumes:
    """Registered volumes over the store, the runners' links and the sandbox records."""

    def __init__(
        self, store: VolumeStore, registry: RunnerRegistry, records: SandboxRecords
    ) -> None:
        self._store = store
        self._registry = registry
        self._records = records
        self._mounting = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except SQLAlchemyError as exc:
            raise store_unavailable(exc) from exc

    async def fail_unfinished(self) -> int:
        """At start-up: checks a previous control plane left running never answer; ERROR."""
        why = "the control plane restarted while the volume was checked; validate it again"
        return await self._db(self._store.fail_validating, why)

    async def close(self) -> None:
        """Cancel checks in flight (shutdown); their volumes stay VALIDATING until checked."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- reading ----------------------------------------------------------------------------
    async def get(self, volume_id: str) -> VolumeRecord:
        """The caller's organization's volume, else ``CWSANDBOX_VOLUME_NOT_FOUND``."""
        record = await self._db(self._store.get, current_caller().organization, volume_id)
        if record is None:
            raise volume_not_found(volume_id)
        return record

    async def page(
        self, after: str, limit: int, states: Sequence[VolumeState], runner_ids: Sequence[str]
    ) -> list[VolumeRecord]:
        """The caller's organization's volumes after id ``after``, by id."""
        owner = current_caller().organization
        return await self._db(self._store.page, owner, after, limit, states, runner_ids)

    def attached(self, record: VolumeRecord) -> int:
        """How many sandboxes that may still run mount the volume (from their runner's specs)."""
        count = 0
        for sandbox in self._records.live_on(record.runner_id):
            if not sandbox.live or sandbox.owner_org != record.owner_org or not sandbox.spec:
                continue
            spec = runner_pb2.SandboxSpec.FromString(sandbox.spec)
            if any(v.volume_id == record.volume_id for v in spec.volumes):
                count += 1
        return count

    # -- registering ------------------------------------------------------------------------
    async def create(self, wanted: VolumeRecord) -> VolumeRecord:
        """Register a volume (VALIDATING) and have its runner make the directory.

        With a request id used before: the volume made then (the same request), or
        ``CWSANDBOX_REQUEST_ID_CONFLICT`` (another one).
        """
        earlier = await self._replayed(wanted)
        if earlier is not None:
            return earlier
        self._check_runner(wanted.runner_id, wanted.volume_id)
        try:
            await self._db(self._store.add, wanted)
        except VolumeExists:
            earlier = await self._replayed(wanted)  # a racing create of the same request
            if earlier is not None:
                return earlier
            raise volume_error(
                grpc.StatusCode.ALREADY_EXISTS,
                "ALREADY_EXISTS",
                f"volume {wanted.volume_id!r} exists already",
                wanted.volume_id,
            ) from None
        task = asyncio.ensure_future(self._check(wanted, create=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return wanted

    async def _replayed(self, wanted: VolumeRecord) -> VolumeRecord | None:
        """The volume an earlier create with the same request id made (None: none)."""
        if not wanted.request_id:
            return None
        earlier = await self._db(self._store.by_request, wanted.owner_org, wanted.request_id)
        if earlier is None or earlier.request_digest == wanted.request_digest:
            return earlier
        error = invalid_argument(
            "request_id", f"{wanted.request_id!r} was already used for another volume"
        )
        raise dataclasses.replace(error, reason="CWSANDBOX_REQUEST_ID_CONFLICT")

    def _check_runner(self, runner_id: str, volume_id: str) -> None:
        runner = self._registry.get(runner_id)
        why = ""
        if runner is None:
            why = "is not known to this control plane"
        elif not support_of(runner.capabilities).volumes:
            why = "has no backend that keeps persistent volumes"
        if why:
            raise volume_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                "RUNNER_INELIGIBLE",
                f"volume.spec.pvc.runner_id: runner {runner_id!r} {why}",
                volume_id,
            )

    async def validate(self, volume_id: str) -> VolumeRecord:
        """Check the volume's directory on its runner again; the record after the check."""
        record = await self.get(volume_id)
        if record.state is VolumeState.DELETING:
            return record
        await self._db(
            self._store.update, record.owner_org, volume_id, state=VolumeState.VALIDATING
        )
        # A volume whose first check never finished (its control plane died during the
        # create) may not have its directory yet: finish the create. Once checked, a
        # missing directory is an error to report, never an empty one to make.
        return await self._check(record, create=record.validated_at is None)

    async def _check(self, record: VolumeRecord, *, create: bool) -> VolumeRecord:
        """Ask the runner; READY, or ERROR with its reason (also when it cannot be asked)."""
        state, reason = VolumeState.READY, ""
        try:
            await self._prepare(record, record.sub_path, create=create)
        except ApiError as error:
            state, reason = VolumeState.ERROR, error.message
        except Exception as exc:  # a bug of ours must not leave it VALIDATING forever
            log.exception("checking volume %s failed", record.volume_id)
            state, reason = VolumeState.ERROR, f"internal error: {exc}"
        updated = await self._db(
            self._store.update,
            record.owner_org,
            record.volume_id,
            state=state,
            state_reason=reason,
            validated_at=now(),
        )
        return updated or record

    async def _prepare(self, record: VolumeRecord, sub_path: str, *, create: bool) -> None:
        runner = self._registry.get(record.runner_id)
        if runner is None or runner.link is None:
            raise volume_error(
                grpc.StatusCode.UNAVAILABLE,
                "RUNNER_UNAVAILABLE",
                f"runner {record.runner_id!r} of volume {record.volume_id!r} is not connected",
                record.volume_id,
            )
        source = runner_pb2.VolumeSource(
            organization=record.owner_org, claim_name=record.claim_name, sub_path=sub_path
        )
        command = runner_pb2.Command(
            prepare_volume=runner_pb2.PrepareVolume(source=source, create=create)
        )
        await runner.link.call(command, timeout=VALIDATE_SECONDS)

    # -- changing ---------------------------------------------------------------------------
    async def update_description(self, volume_id: str, description: str) -> VolumeRecord:
        """Replace the description (the one field that may change)."""
        record = await self.get(volume_id)
        updated = await self._db(
            self._store.update, record.owner_org, volume_id, description=description
        )
        if updated is None:
            raise volume_not_found(volume_id)
        return updated

    async def delete(self, volume_id: str, *, force: bool) -> VolumeRecord:
        """Forget the registration (the directory stays); in use: refused unless forced."""
        async with self._mounting:
            record = await self.get(volume_id)
            users = self.attached(record)
            if users and not force:
                raise volume_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "IN_USE",
                    f"volume {volume_id!r} is mounted by {users} sandbox(es); stop them "
                    "first, or delete with force",
                    volume_id,
                )
            await self._db(self._store.remove, record.owner_org, volume_id)
        return dataclasses.replace(record, state=VolumeState.DELETING)

    # -- mounting into sandboxes --------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def mounting(self) -> AsyncIterator[None]:
        """Held from a create's :meth:`mounts_for` until its record is written."""
        async with self._mounting:
            yield

    async def mounts_for(
        self, wishes: Sequence[MountWish], pinned: Sequence[str]
    ) -> tuple[tuple[VolumeMountPlan, ...], str]:
        """Resolve a create's volume mounts; the plans and the runner they bind it to."""
        plans: list[VolumeMountPlan] = []
        runner_id = ""
        for wish in wishes:
            record = await self.get(wish.volume_id)
            if record.state is not VolumeState.READY:
                raise volume_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NOT_READY",
                    f"volume {record.volume_id!r} is {record.state.value}, not ready"
                    + (f": {record.state_reason}" if record.state_reason else ""),
                    record.volume_id,
                )
            if (runner_id and record.runner_id != runner_id) or (
                pinned and record.runner_id not in pinned
            ):
                where = f"runner {runner_id!r}" if runner_id else f"runner_ids {list(pinned)}"
                raise volume_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "PLACEMENT_CONFLICT",
                    f"volume {record.volume_id!r} lives on runner {record.runner_id!r}; the "
                    f"sandbox cannot also be placed on {where}",
                    record.volume_id,
                )
            runner_id = record.runner_id
            sub_path = joined(record.sub_path, wish.sub_path)
            await self._check_mount(record, sub_path, wish)
            plans.append(
                VolumeMountPlan(
                    volume_id=record.volume_id,
                    name=wish.name,
                    organization=record.owner_org,
                    claim_name=record.claim_name,
                    sub_path=sub_path,
                    mount_path=wish.mount_path,
                    read_only=wish.read_only or record.read_only,
                )
            )
        return tuple(plans), runner_id

    async def _check_mount(self, record: VolumeRecord, sub_path: str, wish: MountWish) -> None:
        """The runner makes the mount's sub-path, refusing a symlink or a file on it."""
        try:
            await self._prepare(record, sub_path, create=False)
        except ApiError as error:
            if error.code is grpc.StatusCode.INVALID_ARGUMENT:
                detail = error.message.split(": ", 1)[-1]
                raise invalid_argument(wish.sub_path_field, detail) from None
            if error.reason.startswith("CWSANDBOX_VOLUME_"):  # the volume's id in metadata
                reason = error.reason.removeprefix("CWSANDBOX_VOLUME_")
                raise volume_error(error.code, reason, error.message, record.volume_id) from None
            raise
