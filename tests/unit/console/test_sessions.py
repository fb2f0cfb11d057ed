"""Console sessions expire (idle and absolute) and sign-in attempts are rate limited.

The clock is a plain counter the test advances: the expiry rules are pure arithmetic on it.
"""

from __future__ import annotations

from sandboxd.console.sessions import LoginLimiter, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_after_idle_time_and_ids_are_unguessable() -> None:
    clock = Clock()
    store = SessionStore(idle_seconds=60, absolute_seconds=3600, clock=clock)
    a = store.create("key-a", "k1", "org-a", "member")
    b = store.create("key-a", "k1", "org-a", "member")
    assert a.session_id != b.session_id and len(a.session_id) >= 40
    clock.now += 59
    assert store.get(a.session_id) is not None  # use restarts the idle clock
    clock.now += 59
    assert store.get(a.session_id) is not None
    assert store.get(b.session_id) is None  # b sat idle for 118 s
    clock.now += 61
    assert store.get(a.session_id) is None


def test_a_used_session_still_ends_at_its_absolute_limit() -> None:
    clock = Clock()
    store = SessionStore(idle_seconds=60, absolute_seconds=300, clock=clock)
    session = store.create("key", "k1", "org", "admin")
    for _ in range(5):
        clock.now += 50
        assert store.get(session.session_id) is not None
    clock.now += 51
    assert store.get(session.session_id) is None


def test_logout_makes_the_id_worthless() -> None:
    store = SessionStore()
    session = store.create("key", "k1", "org", "member")
    store.end(session.session_id)
    assert store.get(session.session_id) is None
    assert store.get("") is None and store.get(None) is None


def test_failed_sign_ins_are_limited_per_address_and_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(attempts=3, window=60, clock=clock)
    for _ in range(3):
        assert limiter.wait("10.0.0.1") == 0.0
        limiter.failed("10.0.0.1")
    assert 59 <= limiter.wait("10.0.0.1") <= 60  # refused now, whatever key comes next
    assert limiter.wait("10.0.0.2") == 0.0  # another address has its own budget
    clock.now += 60
    assert limiter.wait("10.0.0.1") == 0.0
