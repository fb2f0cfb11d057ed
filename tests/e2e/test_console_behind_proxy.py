"""The console behind a TLS-terminating proxy (``--console-public-url``), on a real ``sandboxd up``.

The proxy is played by the test: it sends what such a proxy forwards (the browser's
``Origin: https://sandboxes.test``, and the public ``Host`` or a rewritten loopback one) over
plain HTTP to the console. The public origin must work for sign-in and every write, the
session cookie must be ``Secure``, and any other origin must still be refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.console import Console, cookie_header
from tests.support.processes import Up, all_in_one

PUBLIC = "https://sandboxes.test"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("proxied-console")
    with all_in_one(Path(data), "--console-public-url", PUBLIC) as platform:
        yield platform


def proxied(console: Console, host: str, origin: str = PUBLIC) -> httpx.Client:
    return httpx.Client(base_url=console.url, headers={"host": host, "origin": origin}, timeout=60)


@pytest.mark.parametrize("host", ["sandboxes.test", "keep-loopback"])
def test_the_public_origin_signs_in_with_a_secure_cookie_and_acts(up: Up, host: str) -> None:
    console = Console.of(up.proc)
    forwarded = console.url.split("/")[2] if host == "keep-loopback" else host
    with proxied(console, forwarded) as client:
        signed = client.post("api/session", json={"api_key": up.api_key})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        # httpx (like a browser) keeps a Secure cookie off plain http; the browser sends it to
        # the proxy over https, and the proxy forwards it: so does this test.
        forward = cookie_header(client)
        assert client.get("api/session", headers=forward).json()["role"] == "admin"
        assert client.post("api/session/logout", json={}, headers=forward).status_code == 200
        assert client.get("api/session", headers=forward).status_code == 401


def test_other_origins_and_hosts_are_still_refused(up: Up) -> None:
    console = Console.of(up.proc)
    for origin in ("https://evil.example", "https://sandboxes.test:8443", "null"):
        with proxied(console, "sandboxes.test", origin) as client:
            refused = client.post("api/session", json={"api_key": up.api_key})
            assert refused.status_code == 403, (origin, refused.text)
    with proxied(console, "evil.example") as client:  # DNS rebinding through the proxy name
        assert client.post("api/session", json={"api_key": up.api_key}).status_code == 421


def test_a_malformed_public_url_is_refused_naming_the_option(tmp_path: Path) -> None:
    import subprocess

    from tests.support.processes import SANDBOXD, child_env

    done = subprocess.run(
        [*SANDBOXD, "up", "--data-dir", str(tmp_path), "--console-public-url", "https://x/y"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--console-public-url" in done.stderr and "no path" in done.stderr
