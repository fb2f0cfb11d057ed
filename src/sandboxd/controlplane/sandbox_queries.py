"""Protocol-neutral sandbox reads shared by the v1beta2 and v1 front ends.

Why here and not in a gateway: both public protocols answer "get this sandbox" and "list
sandboxes" over the same records with the same semantics (a short long-poll for a starting
sandbox; list filters, tenancy and pagination); only the wire messages differ. Each front
end maps its request onto these functions and the records onto its own messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.pagination import (
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
    take_page,
)
from sandboxd.controlplane.sandbox_model import (
    STARTING_STATUSES,
    TERMINAL_STATUSES,
    SandboxRecord,
)
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.store.sandbox_store import ListQuery

GET_LONG_POLL_SECONDS = 0.5


async def settled_record(lifecycle: Lifecycle, sandbox_id: str) -> SandboxRecord:
    """The caller's sandbox; one still starting gets a short wait to turn RUNNING first.

    A starting sandbox usually turns RUNNING within milliseconds, so a client's first poll
    sees it instead of sleeping its poll interval.
    """
    record = await lifecycle.record(sandbox_id)
    if record.status in STARTING_STATUSES:
        await lifecycle.records.wait_change(record.sandbox_id, GET_LONG_POLL_SECONDS)
        record = await lifecycle.record(sandbox_id)
    return record


@dataclass(frozen=True)
class SandboxFilter:
    """What a List asks for, in record terms; ``status`` is a v1beta2 status (0: any)."""

    tags: tuple[str, ...] = ()
    status: int = 0
    profiles: tuple[str, ...] = ()
    runners: tuple[str, ...] = ()
    include_stopped: bool = False


async def list_page(
    records: SandboxRecords, wanted: SandboxFilter, page_size: int, page_token: str
) -> tuple[list[SandboxRecord], str]:
    """One page of the caller's sandboxes that match, oldest first, and the next token.

    Only non-terminal sandboxes unless stopped ones are asked for; a terminal status filter
    widens to stopped sandboxes by itself (v1beta2.md §4.6, v1.md §4.6). Members see their
    organization's sandboxes, administrators every organization's.
    """
    size = page_size_of(page_size)
    fingerprint = filter_fingerprint(
        (
            tuple(sorted(wanted.tags)),
            wanted.status,
            tuple(sorted(wanted.profiles)),
            tuple(sorted(wanted.runners)),
            wanted.include_stopped,
        )
    )
    after = decode_token(page_token, fingerprint)
    caller = current_caller()
    with_stopped = wanted.include_stopped or wanted.status in TERMINAL_STATUSES
    query = ListQuery(
        owner="" if caller.is_admin else caller.organization,
        after=after,
        limit=size + 1,
        statuses=(wanted.status,) if wanted.status else (),
        exclude_statuses=() if with_stopped else tuple(TERMINAL_STATUSES),
        tags=wanted.tags,
        profiles=tuple(sorted(wanted.profiles)),
        runners=tuple(sorted(wanted.runners)),
    )
    matches = await records.page(query)
    page, last = take_page(iter(matches), size, key=lambda r: r.sandbox_id)
    return page, encode_token(last, fingerprint) if last else ""
