"""Reading a sandbox's activity trail (sandboxd's ``EventService``; ``cwsandbox events``).

Why a separate, synchronous reader: the trail is an operator's and owner's tool (what ran
in this sandbox, who asked, which files moved), read from the command line or a script,
and following it is a plain blocking loop. Errors are translated like every sandbox call:
another organization's sandbox, or one that never existed, is ``SandboxNotFoundError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from cwsandbox._channel import open_channel
from cwsandbox._config import auth_metadata, resolve_endpoint
from cwsandbox._error_mapping import sandbox_error
from sandboxd_protocol.sandboxd_v1 import events_pb2

__all__ = ["SandboxEvent", "iter_events"]

METHOD = "/sandboxd.events.v1.EventService/ListEvents"


@dataclass(frozen=True)
class SandboxEvent:
    """One entry of a sandbox's trail: when, what, who caused it, and its details."""

    seq: int
    sandbox_id: str
    at: datetime
    kind: str
    actor: str
    data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``at`` in ISO 8601)."""
        return {
            "seq": self.seq,
            "sandbox_id": self.sandbox_id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "actor": self.actor,
            "data": self.data,
        }


def iter_events(
    sandbox_id: str,
    *,
    follow: bool = False,
    after_seq: int = 0,
    base_url: str | None = None,
    timeout: float | None = None,
) -> Iterator[SandboxEvent]:
    """Yield the sandbox's events in order; with ``follow``, keep waiting for new ones."""
    endpoint = resolve_endpoint(base_url)
    request = events_pb2.ListEventsRequest(
        sandbox_id=sandbox_id, after_seq=after_seq, follow=follow
    )
    with open_channel(endpoint) as channel:
        call = channel.unary_stream(
            METHOD,
            request_serializer=events_pb2.ListEventsRequest.SerializeToString,
            response_deserializer=events_pb2.SandboxEvent.FromString,
        )
        try:
            for message in call(request, timeout=timeout, metadata=auth_metadata()):
                yield SandboxEvent(
                    seq=message.seq,
                    sandbox_id=message.sandbox_id,
                    at=message.at.ToDatetime(tzinfo=UTC),
                    kind=message.kind,
                    actor=message.actor,
                    data=json.loads(message.data_json or "{}"),
                )
        except grpc.RpcError as err:
            raise sandbox_error(err, operation="events", sandbox_id=sandbox_id) from None
