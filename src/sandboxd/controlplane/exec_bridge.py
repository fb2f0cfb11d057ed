"""Rendezvous between a client's StreamExec and the runner's Exec stream for the same process.

Why a rendezvous: runners only dial out, so the control plane cannot open a stream to a runner.
It asks the runner (over the control stream) to dial ``RunnerService.Exec`` with a fresh
``stream_id``; when that call arrives, the two streams are joined through two bounded queues.
Bounded queues mean a slow reader slows the process's output down through HTTP/2 flow control
instead of losing or buffering unbounded output, and each exec is its own HTTP/2 stream, so
one slow exec never delays another on the same runner.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from cwsandbox._proto import streaming_pb2

QUEUE_FRAMES = 64
ATTACH_TIMEOUT_SECONDS = 10.0


@dataclass
class ExecSession:
    """The two directions of one exec while both ends are attached."""

    stream_id: str
    runner_id: str
    # runner -> client frames; None marks the end of the runner's stream
    upstream: asyncio.Queue[streaming_pb2.ExecStreamResponse | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_FRAMES)
    )
    # client -> runner frames (stdin, resize, close); None ends the runner's stream
    downstream: asyncio.Queue[streaming_pb2.ExecStreamRequest | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_FRAMES)
    )
    attached: asyncio.Event = field(default_factory=asyncio.Event)


class ExecSessions:
    """Sessions waiting for, or joined with, their runner's Exec stream."""

    def __init__(self) -> None:
        self._sessions: dict[str, ExecSession] = {}

    def open(self, runner_id: str) -> ExecSession:
        """A new session with an unguessable id, waiting for its runner."""
        session = ExecSession(secrets.token_urlsafe(18), runner_id)
        self._sessions[session.stream_id] = session
        return session

    def attach(self, stream_id: str, runner_id: str) -> ExecSession | None:
        """Called by the runner's Exec handler; None if no such session is waiting."""
        session = self._sessions.get(stream_id)
        if session is None or session.runner_id != runner_id or session.attached.is_set():
            return None
        session.attached.set()
        return session

    def close(self, session: ExecSession) -> None:
        """Forget a session; ends the runner's stream if it is attached."""
        self._sessions.pop(session.stream_id, None)
        try:
            session.downstream.put_nowait(None)
        except asyncio.QueueFull:
            # Make room: the runner's side is ending anyway, pending stdin is moot.
            while not session.downstream.empty():
                session.downstream.get_nowait()
            session.downstream.put_nowait(None)
