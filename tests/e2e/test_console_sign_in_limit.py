"""Guessing API keys at the console's sign-in is slowed: 10 failures a minute per address.

A platform of its own (``quiet_platform``): the limit it reaches must not lock out the other
console tests.
"""

from __future__ import annotations

from tests.e2e.conftest import Platform
from tests.support.console import Console


def test_sign_in_attempts_past_the_limit_are_refused_even_with_a_valid_key(
    quiet_platform: Platform,
) -> None:
    console = Console.of(quiet_platform.proc)
    with console.client() as client:
        for attempt in range(10):
            reply = client.post("api/session", json={"api_key": f"sbxk_{attempt:016d}_guess"})
            assert reply.status_code == 401, reply.text
        limited = client.post("api/session", json={"api_key": quiet_platform.api_key})
        assert limited.status_code == 429 and "too many" in limited.json()["error"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("api/session").status_code == 401  # no session was made
