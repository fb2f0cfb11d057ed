"""Moving a start that failed because of its runner to another runner that can take it.

Why: placement chooses from what each runner last said of itself, and a runner can still
fail a start for reasons of its own: its disk filled up since its last heartbeat, its host
firewall refuses every change, its backend went away. Such a sandbox used to end FAILED
though another runner could have run it, and its user had to Start again (the start
backoff, ``start_backoff.py``, only spares the Starts that come later). Now the control
plane places it again as it placed it first — the same request, so the same runner pins,
profile and limits — leaving out every runner that already failed it, and sends the start
there. The sandbox keeps its id; a client, which only ever saw it starting, sees it run.

What moves, and what does not:

* only failures that say the runner cannot make sandboxes now (:func:`moves_elsewhere`):
  UNAVAILABLE (its backend or its host's network is away) and
  ``CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED`` (its disk, its cgroups). INTERNAL and UNKNOWN
  count against the runner too, but a request that crashes a runner would crash the next
  one as well: it is not carried around the cluster;
* at most :data:`MAX_MOVES` times (a restarted control plane counts afresh), and within
  the sandbox's one start deadline, which a restart does not extend;
* onto the same profile, with the same limits, so the organization's quotas and what the
  client was told at Start still hold; a request whose pins leave no other runner (its
  volumes' runner, say) fails as before;
* only requests known: held in memory while their sandbox starts (without their mounted
  files, which the stored spec keeps), and stored with the record until the start settles
  (``held_requests.py``), so a start placed before this control plane restarted, or by
  another control plane on the same database, moves too. A start whose record has none (a
  row of an earlier version) or one this version cannot read fails as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import grpc

from sandboxd.controlplane.held_requests import decode_request
from sandboxd.controlplane.placement import place_elsewhere
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import Desired, Observed, SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.sandbox_spec import build_spec, placed_fields
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)

MAX_MOVES = 2
"""Runners a start may move to after the first failed it (so at most three are tried)."""
MAX_HELD = 10_000
"""Starting sandboxes whose requests are held; past it, new starts are not moved."""
_MOVED_FOR = frozenset({"CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"})


def moves_elsewhere(error: ApiError) -> bool:
    """Whether a start that failed with ``error`` may be tried on another runner."""
    return error.code is grpc.StatusCode.UNAVAILABLE or error.reason in _MOVED_FOR


@dataclass
class _Held:
    request: SandboxRequest
    failed_on: list[str] = field(default_factory=list)


def _still_starting(record: SandboxRecord) -> bool:
    return (
        record.observed is Observed.NONE
        and not record.terminal
        and (record.desired is Desired.RUNNING)
    )


class StartMoves:
    """The requests of sandboxes that are starting, and moving them when a runner fails one."""

    def __init__(self, records: SandboxRecords, registry: RunnerRegistry) -> None:
        self._records = records
        self._registry = registry
        self._held: dict[str, _Held] = {}
        self.moved = 0
        """Starts moved so far (``sandboxd_start_moves_total``)."""

    def __len__(self) -> int:
        """Requests held now."""
        return len(self._held)

    def hold(self, sandbox_id: str, request: SandboxRequest) -> None:
        """Keep ``request`` while its sandbox starts (called before its record is added)."""
        if len(self._held) >= MAX_HELD:
            return
        if request.mounted_files:  # the stored spec keeps them; a copy only then (hot path)
            request = replace(request, mounted_files=())
        self._held[sandbox_id] = _Held(request)

    def release(self, sandbox_id: str) -> None:
        """Forget a request (its record was never stored)."""
        self._held.pop(sandbox_id, None)

    def observe_record(self, record: SandboxRecord) -> None:
        """Forget a request once its sandbox started, ended, or is being stopped or deleted.

        Chained onto the records' ``on_change``, so every way a start settles is seen.
        """
        if record.sandbox_id in self._held and not _still_starting(record):
            del self._held[record.sandbox_id]

    def _adopt(self, record: SandboxRecord) -> _Held | None:
        """Hold the request stored with ``record`` (placed before a restart, or elsewhere)."""
        if len(self._held) >= MAX_HELD or not _still_starting(record):
            return None  # past the bound, as for new starts: its failures could not be counted
        request = decode_request(record.start_request)
        if request is None:
            return None
        held = self._held[record.sandbox_id] = _Held(request)  # its failures count from here
        return held

    async def move(self, record: SandboxRecord, error: ApiError) -> bool:
        """Place a start that ``record``'s runner failed with ``error`` on another runner.

        True once the record names the new runner (its reconciler is kicked by the change);
        False when the start is not moved and is to end FAILED as the runner said. Raises
        UNAVAILABLE when the database refuses the write (the start is then tried again).
        """
        if record.spec is None or not moves_elsewhere(error):
            return False
        held = self._held.get(record.sandbox_id) or self._adopt(record)
        if held is None:
            return False
        failed_on = record.runner_id
        if failed_on not in held.failed_on:
            held.failed_on.append(failed_on)
        if len(held.failed_on) > MAX_MOVES:
            return False
        request = held.request
        if record.profile_name:
            request = replace(request, profile_names=(record.profile_name,))
        placement = place_elsewhere(self._registry, request, frozenset(held.failed_on))
        if placement is None or (placement.cpu_limit, placement.memory_limit) != (
            record.cpu_limit_millicores,
            record.memory_limit_bytes,
        ):
            return False
        spec = build_spec(record.sandbox_id, held.request, placement)
        spec.mounted_files.extend(runner_pb2.SandboxSpec.FromString(record.spec).mounted_files)
        fields = placed_fields(placement, spec)

        def moved(current: SandboxRecord) -> SandboxRecord | None:
            if (
                current.runner_id != failed_on
                or current.generation != record.generation
                or not _still_starting(current)
            ):
                return None  # it changed meanwhile (deleted, stopped, given up): leave it
            return replace(current, **fields)

        stored = await self._records.update(record.sandbox_id, moved)
        if stored is None or stored.runner_id == failed_on:
            return False
        self.moved += 1
        log.warning(
            "sandbox %s: its start failed on runner %s (%s); moved to runner %s",
            record.sandbox_id,
            failed_on,
            error.message,
            stored.runner_id,
        )
        return True


__all__ = ["MAX_MOVES", "StartMoves", "moves_elsewhere"]
