"""``sandboxd.events.v1.EventService``: a sandbox's activity trail, for its owner.

Why the owner check looks at the trail too: the trail outlives the sandbox record (it is
kept for the retention period after a delete), so when the record is gone the organization
recorded on the events decides; for anyone else the sandbox looks missing, as everywhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd.store.event_store import SandboxEvent
from sandboxd_protocol.sandboxd_v1 import events_pb2, events_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
PAGE = 500


def event_message(event: SandboxEvent) -> events_pb2.SandboxEvent:
    """The wire form of one event."""
    at = timestamp_pb2.Timestamp()
    at.FromDatetime(event.at)
    return events_pb2.SandboxEvent(
        seq=event.seq,
        sandbox_id=event.sandbox_id,
        at=at,
        kind=event.kind,
        actor=event.actor,
        data_json=json.dumps(event.data, sort_keys=True),
    )


def _not_found(sandbox_id: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"sandbox {sandbox_id!r} not found",
        reason="CWSANDBOX_SANDBOX_NOT_FOUND",
        metadata={"sandbox_id": sandbox_id},
    )


class EventService(events_pb2_grpc.EventServiceServicer):
    """Lists and follows the trail of one sandbox."""

    def __init__(self, events: EventLog, records: SandboxRecords) -> None:
        self._events = events
        self._records = records

    async def _check_owner(self, sandbox_id: str) -> list[SandboxEvent]:
        """The trail's first page, once the caller is known to own the sandbox."""
        caller = current_caller()
        record = await self._records.get(sandbox_id)
        first = await self._events.page(sandbox_id, 0, PAGE)
        owner = record.owner_org if record is not None else (first[0].owner_org if first else None)
        if owner is None or not caller.can_see(owner):
            raise _not_found(sandbox_id)
        return first

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Context
    ) -> AsyncIterator[events_pb2.SandboxEvent]:
        """Events after ``after_seq`` in order; with ``follow``, then new ones as they come."""
        try:
            if not request.sandbox_id:
                raise invalid_argument("sandbox_id", "must name a sandbox")
            if request.after_seq < 0:
                raise invalid_argument("after_seq", "must not be negative")
            first = await self._check_owner(request.sandbox_id)
        except ApiError as error:
            await abort_with(context, error)
            return
        after = request.after_seq
        page = [e for e in first if e.seq > after] if after else first
        while page:
            for event in page:
                after = event.seq
                yield event_message(event)
            if len(page) < PAGE:
                break
            page = await self._events.page(request.sandbox_id, after, PAGE)
        if request.follow:
            async for event in self._events.follow(request.sandbox_id, after):
                yield event_message(event)
