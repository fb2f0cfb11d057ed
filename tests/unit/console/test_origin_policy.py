"""Which hosts and origins the console answers (DNS rebinding and cross-site requests)."""

from __future__ import annotations

import pytest

from sandboxd.console.security import OriginPolicy, public_url_problem


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
    same = OriginPolicy("127.0.0.1").same_origin
    assert same("http://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert not same("http://127.0.0.1:8081", "127.0.0.1:8080", "http")
    assert not same("https://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert not same("null", "127.0.0.1:8080", "http")
    assert not same("", "127.0.0.1:8080", "http")


def test_behind_a_tls_proxy_its_public_origin_is_accepted_and_nothing_else() -> None:
    """The browser says ``https://sandboxes.example.com``; the console sees plain http."""
    policy = OriginPolicy("127.0.0.1", "https://Sandboxes.example.com/")
    assert policy.host_allowed("sandboxes.example.com")  # a proxy that keeps the Host
    assert policy.host_allowed("127.0.0.1:8080")  # one that rewrites it
    assert policy.same_origin("https://sandboxes.example.com", "sandboxes.example.com", "http")
    assert policy.same_origin("https://sandboxes.example.com", "127.0.0.1:8080", "http")
    # Downgraded to http, through a proxy that rewrites the Host: not the public origin.
    assert not policy.same_origin("http://sandboxes.example.com", "127.0.0.1:8080", "http")
    for origin in (
        "https://sandboxes.example.com:8443",  # another port
        "https://sandboxes.example.com.evil.example",
        "https://evil.example",
        "null",
    ):
        assert not policy.same_origin(origin, "sandboxes.example.com", "http"), origin
    assert not policy.host_allowed("evil.example")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://sandboxes.example.com", None),
        ("https://sandboxes.example.com:8443/", None),
        ("http://[2001:db8::1]:8080", None),
        ("sandboxes.example.com", "must start with https://"),
        ("ftp://sandboxes.example.com", "must start with https://"),
        ("https://", "no path"),
        ("https://sandboxes.example.com/console", "no path"),
        ("https://user@sandboxes.example.com", "no path, query or user"),
        ("https://sandboxes.example.com?x=1", "no path, query"),
    ],
)
def test_public_url_checks(url: str, problem: str | None) -> None:
    found = public_url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)
