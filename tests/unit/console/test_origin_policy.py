"""Which hosts and origins the console answers (DNS rebinding and cross-site requests)."""

from __future__ import annotations

from sandboxd.console.security import OriginPolicy


def test_a_loopback_console_answers_loopback_names_only() -> None:
    policy = OriginPolicy("127.0.0.1")
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):
        assert policy.host_allowed(host), host
    # A rebinding attacker's name that resolves to 127.0.0.1 is not this console.
    for host in ("evil.example:8080", "127.0.0.1.evil.example", "", "[::2]:80"):
        assert not policy.host_allowed(host), host


def test_a_named_console_answers_its_name() -> None:
    policy = OriginPolicy("console.internal")
    assert policy.host_allowed("console.internal:443")
    assert not policy.host_allowed("localhost:443")


def test_origin_must_be_exactly_the_console_itself() -> None:
    same = OriginPolicy.same_origin
    assert same("http://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert not same("http://127.0.0.1:8081", "127.0.0.1:8080", "http")
    assert not same("https://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert not same("null", "127.0.0.1:8080", "http")
    assert not same("", "127.0.0.1:8080", "http")
