"""Driving the web console of a running ``sandboxd up`` over HTTP and WebSockets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.processes import Proc, printed


@dataclass(frozen=True)
class Console:
    """A console's address (``SANDBOXD_CONSOLE_URL``)."""

    url: str

    @classmethod
    def of(cls, proc: Proc) -> Console:
        return cls(printed(proc, "SANDBOXD_CONSOLE_URL"))

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def client(self, cookies: dict[str, str] | None = None, **headers: str) -> httpx.Client:
        """A client that sends the console's own Origin (as its page would)."""
        return httpx.Client(
            base_url=self.url,
            headers={"origin": self.origin, **headers},
            cookies=cookies,
            timeout=60,
        )

    @contextlib.contextmanager
    def signed_in(self, api_key: str) -> Iterator[httpx.Client]:
        with self.client() as client:
            reply = client.post("api/session", json={"api_key": api_key})
            assert reply.status_code == 200, reply.text
            yield client


def cookie_header(client: httpx.Client) -> dict[str, str]:
    """The session cookie of ``client`` as a header (for a WebSocket handshake)."""
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}


def start_sandbox(client: httpx.Client, script: str, **extra: Any) -> str:
    """Start a sandbox running ``sh -c script`` through the console; its id."""
    reply = client.post(
        "api/sandboxes", json={"command": "/bin/sh", "args": ["-c", script], **extra}
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["sandbox_id"])
