"""The runner's side of the connection trail: the backend's attempts, sent to the control plane.

Why a task of its own rather than part of a session: the backend sees attempts whether or
not the runner is connected right now. Batches go out on whichever control stream is
current; while there is none they are dropped and counted (the trail is evidence of what was
attempted, not a queue that may grow while the control plane is away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from google.protobuf import timestamp_pb2

from sandboxd.backends.base import Backend, ConnectionAttempt
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["forward_connection_attempts", "to_message"]

log = logging.getLogger(__name__)


def to_message(batch: list[ConnectionAttempt]) -> runner_pb2.RunnerMessage:
    """One batch as a ``connections`` runner message."""
    attempts = []
    for attempt in batch:
        at = timestamp_pb2.Timestamp()
        at.FromNanoseconds(int(attempt.at * 1e9))
        attempts.append(
            runner_pb2.ConnectionAttempt(
                sandbox_id=attempt.sandbox_id,
                at=at,
                protocol=attempt.protocol,
                destination=attempt.destination,
                port=attempt.port,
                decision=attempt.decision,
                rule=attempt.rule,
                count=attempt.count,
            )
        )
    return runner_pb2.RunnerMessage(connections=runner_pb2.ConnectionLog(attempts=attempts))


async def forward_connection_attempts(
    backend: Backend, send: Callable[[runner_pb2.RunnerMessage], Awaitable[None]]
) -> None:
    """Send every batch the backend reports until it stops reporting (or we are cancelled)."""
    dropped = 0
    async for batch in backend.connection_attempts():
        try:
            await send(to_message(batch))
        except Exception as error:  # not connected, or the stream just broke
            dropped += len(batch)
            log.warning(
                "connection trail: %d attempts not sent (%s); %d since start",
                len(batch),
                error,
                dropped,
            )
