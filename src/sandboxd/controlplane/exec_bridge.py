"""Rendezvous between a client's stream and the runner's stream for the same operation.

Why a rendezvous: runners only dial out, so the control plane cannot open a stream to a runner.
It asks the runner (over the control stream) to dial a per-operation RPC —
``RunnerService.Exec`` for an exec, ``RunnerService.Logs`` for a log stream — with a fresh
``stream_id``; when that call arrives, the two streams are joined through two bounded queues.
Bounded queues mean a slow reader slows the producer down through HTTP/2 flow control
instead of losing or buffering unbounded output, and each operation is its own HTTP/2
stream, so one slow exec or log follow never delays another on the same runner.

Sessions carry their ``kind``, so a runner can only attach an exec call to an exec session
and a logs call to a logs session, even though both share one table.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from cwsandbox._proto import streaming_pb2
from sandboxd._proto import runner_pb2

QUEUE_FRAMES = 64
ATTACH_TIMEOUT_SECONDS = 10.0

Kind = Literal["exec", "logs"]
Up = TypeVar("Up")
Down = TypeVar("Down")


def _queue() -> asyncio.Queue[Any]:
    return asyncio.Queue(QUEUE_FRAMES)


@dataclass
class BridgeSession(Generic[Up, Down]):
    """The two directions of one operation while both ends are attached."""

    stream_id: str
    runner_id: str
    kind: Kind
    # runner -> client frames; None marks the end of the runner's stream
    upstream: asyncio.Queue[Up | None] = field(default_factory=_queue)
    # client -> runner frames; None ends the runner's stream
    downstream: asyncio.Queue[Down | None] = field(default_factory=_queue)
    attached: asyncio.Event = field(default_factory=asyncio.Event)


ExecSession = BridgeSession[streaming_pb2.ExecStreamResponse, streaming_pb2.ExecStreamRequest]
LogSession = BridgeSession[streaming_pb2.LogStreamResponse, runner_pb2.LogsControl]


class StreamSessions:
    """Sessions waiting for, or joined with, their runner's per-operation stream."""

    def __init__(self) -> None:
        self._sessions: dict[str, BridgeSession[Any, Any]] = {}

    def _open(self, runner_id: str, kind: Kind) -> BridgeSession[Any, Any]:
        session: BridgeSession[Any, Any] = BridgeSession(secrets.token_urlsafe(18), runner_id, kind)
        self._sessions[session.stream_id] = session
        return session

    def open(self, runner_id: str) -> ExecSession:
        """A new exec session with an unguessable id, waiting for its runner."""
        return self._open(runner_id, "exec")

    def open_logs(self, runner_id: str) -> LogSession:
        """A new log session with an unguessable id, waiting for its runner."""
        return self._open(runner_id, "logs")

    def attach(
        self, stream_id: str, runner_id: str, kind: Kind = "exec"
    ) -> BridgeSession[Any, Any] | None:
        """Called by the runner's stream handler; None if no such session is waiting."""
        session = self._sessions.get(stream_id)
        if (
            session is None
            or session.runner_id != runner_id
            or session.kind != kind
            or session.attached.is_set()
        ):
            return None
        session.attached.set()
        return session

    def close_runner(self, runner_id: str) -> int:
        """Close every session of a runner (its credential was revoked); returns how many."""
        sessions = [s for s in self._sessions.values() if s.runner_id == runner_id]
        for session in sessions:
            self.close(session)
        return len(sessions)

    def close(self, session: BridgeSession[Any, Any]) -> None:
        """Forget a session; ends the runner's stream if it is attached."""
        self._sessions.pop(session.stream_id, None)
        try:
            session.downstream.put_nowait(None)
        except asyncio.QueueFull:
            # Make room: the runner's side is ending anyway, pending stdin is moot.
            while not session.downstream.empty():
                session.downstream.get_nowait()
            session.downstream.put_nowait(None)

    def __len__(self) -> int:
        return len(self._sessions)


# The name the server wires in (exec came first; logs share the table).
ExecSessions = StreamSessions
