"""Console sessions: an HttpOnly cookie that stands for an API key, and a brake on guessing.

Why the key stays on the server: a key in the browser's storage is readable by any script
that runs on the page, so one XSS would leak a long-lived credential. The browser holds only a
random session id (HttpOnly, SameSite=Strict), worthless once the session ends; every call the
console makes on the caller's behalf still presents the key itself to the gRPC API, so the
API's identity rules (organization, role, revocation) apply unchanged.

Why both an idle and an absolute expiry: a forgotten tab must not stay signed in for days, and
a stolen session id must not live forever even when it is used.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

SESSION_IDLE_SECONDS = 60 * 60.0
SESSION_ABSOLUTE_SECONDS = 12 * 60 * 60.0
MAX_SESSIONS = 10_000
# Sign-in attempts a client address may make per window, failed or not.
LOGIN_ATTEMPTS_PER_WINDOW = 10
LOGIN_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the key it presented and who that key is."""

    session_id: str
    api_key: str
    key_id: str
    organization: str
    role: str
    created_at: float
    last_used_at: float

    @property
    def is_admin(self) -> bool:
        """Whether the key may use the admin actions (the gRPC API checks again)."""
        return self.role == "admin"


class SessionStore:
    """Sessions in this process's memory; a restart signs everyone out, which is safe."""

    def __init__(
        self,
        *,
        idle_seconds: float = SESSION_IDLE_SECONDS,
        absolute_seconds: float = SESSION_ABSOLUTE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle = idle_seconds
        self._absolute = absolute_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, api_key: str, key_id: str, organization: str, role: str) -> Session:
        """A new session with an unguessable id (256 bits)."""
        self._forget_expired()
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest goes: memory stays bounded
            oldest = min(self._sessions.values(), key=lambda s: s.created_at)
            del self._sessions[oldest.session_id]
        now = self._clock()
        session = Session(
            session_id=secrets.token_urlsafe(32),
            api_key=api_key,
            key_id=key_id,
            organization=organization,
            role=role,
            created_at=now,
            last_used_at=now,
        )
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its idle clock restarts), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session = replace(session, last_used_at=now)
        self._sessions[session_id] = session
        return session

    def end(self, session_id: str | None) -> None:
        """Sign out: the id is worthless from now on."""
        if session_id:
            self._sessions.pop(session_id, None)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used_at > self._idle or now - session.created_at > self._absolute

    def _forget_expired(self) -> None:
        now = self._clock()
        for session_id in [s.session_id for s in self._sessions.values() if self._expired(s, now)]:
            del self._sessions[session_id]


class LoginLimiter:
    """At most ``attempts`` failed sign-ins per client address per ``window`` seconds.

    Why only failures count, and a success resets nothing: people who sign in often are not
    slowed, while a guesser that also owns one valid key cannot use it to earn more guesses.
    Once the budget is spent every attempt is refused, a valid key included, until the
    oldest failure leaves the window.
    """

    def __init__(
        self,
        attempts: int = LOGIN_ATTEMPTS_PER_WINDOW,
        window: float = LOGIN_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attempts = attempts
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def wait(self, client: str) -> float:
        """0.0 if ``client`` may try to sign in now, else seconds until it may."""
        now = self._clock()
        times = self._failures.get(client)
        if times is None:
            return 0.0
        while times and now - times[0] >= self._window:
            times.popleft()
        if not times:
            del self._failures[client]
            return 0.0
        if len(times) >= self._attempts:
            return self._window - (now - times[0])
        return 0.0

    def failed(self, client: str) -> None:
        """Count a failed sign-in of ``client``."""
        if len(self._failures) >= MAX_SESSIONS and client not in self._failures:
            self.wait(next(iter(self._failures)))  # forget an old address; memory stays bounded
        self._failures.setdefault(client, deque()).append(self._clock())
