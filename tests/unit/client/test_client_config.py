"""Base URL validation, endpoint resolution, credentials and channel options."""

from __future__ import annotations

import pytest

from cwsandbox import _config
from cwsandbox._channel import CHANNEL_OPTIONS
from cwsandbox._config import Endpoint, auth_metadata, resolve_endpoint


@pytest.mark.parametrize(
    ("url", "target", "secure"),
    [
        ("http://127.0.0.1:50051", "127.0.0.1:50051", False),
        ("http://127.0.0.1:50051/", "127.0.0.1:50051", False),
        ("http://localhost", "localhost:80", False),
        ("https://sandboxes.example.com", "sandboxes.example.com:443", True),
        ("https://sandboxes.example.com:8443/", "sandboxes.example.com:8443", True),
        ("HTTP://127.0.0.1:9", "127.0.0.1:9", False),
        ("http://[::1]:50051", "[::1]:50051", False),
        ("  http://127.0.0.1:1  ", "127.0.0.1:1", False),
    ],
)
def test_valid_urls(url: str, target: str, secure: bool) -> None:
    endpoint = Endpoint.parse(url)
    assert endpoint.target == target
    assert endpoint.secure is secure
    assert not endpoint.base_url.endswith("/")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "must not be empty"),
        ("127.0.0.1:50051", "http:// or https://"),
        ("ftp://host", "http:// or https://"),
        ("grpc://host:1", "http:// or https://"),
        ("http://host:1/api", "must not have a path"),
        ("http://host:1/v1/", "must not have a path"),
        ("http://host:1?x=1", "query string"),
        ("http://host:1#frag", "query string or fragment"),
        ("http://user:pw@host:1", "credentials"),
        ("http://", "no host"),
        ("http://:50051", "no host"),
        ("http://host:99999", "invalid port"),
        ("http://host:abc", "invalid port"),
        ("http://host:0", "invalid port"),
    ],
)
def test_invalid_urls(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"base URL|must not be empty") as info:
        Endpoint.parse(url)
    assert fragment in str(info.value)


def test_default_is_local_sandboxd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CWSANDBOX_BASE_URL", raising=False)
    assert resolve_endpoint().base_url == "http://127.0.0.1:50051"
    monkeypatch.setenv("CWSANDBOX_BASE_URL", "   ")
    assert resolve_endpoint().base_url == "http://127.0.0.1:50051"


def test_env_and_explicit_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", "http://127.0.0.1:6000")
    assert resolve_endpoint().target == "127.0.0.1:6000"
    assert resolve_endpoint("http://127.0.0.1:7000").target == "127.0.0.1:7000"


def test_bad_env_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", "http://127.0.0.1:1/path")
    with pytest.raises(ValueError, match=r"invalid CWSANDBOX_BASE_URL: .*must not have a path"):
        resolve_endpoint()


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_auth_header_without_key(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CWSANDBOX_API_KEY", raising=False)
    else:
        monkeypatch.setenv("CWSANDBOX_API_KEY", value)
    assert auth_metadata() == ()


def test_auth_header_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWSANDBOX_API_KEY", "k1")
    assert auth_metadata() == (("authorization", "Bearer k1"),)
    monkeypatch.setenv("CWSANDBOX_API_KEY", " k2\n")
    assert auth_metadata() == (("authorization", "Bearer k2"),)


def test_channel_limits_are_100_mib() -> None:
    assert dict(CHANNEL_OPTIONS) == {
        "grpc.max_send_message_length": 100 * 1024 * 1024,
        "grpc.max_receive_message_length": 100 * 1024 * 1024,
    }
    assert _config.DISCOVERY_TIMEOUT_SECONDS == 30.0
