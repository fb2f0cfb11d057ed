"""The console's HTTP boundary: which hosts and origins it answers, and its response headers.

Why each check:

* **Host**: a page on another site can point its own DNS name at 127.0.0.1 (DNS rebinding)
  and then talk to the console as "same origin". Only the names the console was bound to
  (and the loopback names, when bound to loopback) are answered.
* **Origin on every state-changing request and every WebSocket**: the session cookie is
  SameSite=Strict already; a request whose Origin is not the console's own is refused before
  it is read, so a cross-site form, fetch or WebSocket cannot act with a visitor's session.
  Behind a TLS-terminating proxy the browser's origin is the proxy's (``https://name``), not
  what the console sees (``http``, maybe another Host): ``--console-public-url`` names it, and
  then exactly that origin (and its host) is accepted too, and the cookie is ``Secure``.
* **Content-Security-Policy**: scripts only from the console's own files; sandbox-controlled
  text (logs, terminal output, names) is rendered as text, and even a mistake that let it in
  as HTML could not run a script.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# xterm.js sets element styles from script, hence 'unsafe-inline' for styles only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class OriginPolicy:
    """The hosts the console answers to, from the address it listens on."""

    def __init__(self, listen_host: str, public_url: str | None = None) -> None:
        host = listen_host.strip()
        self.any_host = host in WILDCARD_HOSTS
        names = {host.lower()}
        if host in LOOPBACK_HOSTS:
            names |= LOOPBACK_HOSTS
        self.public_origin = ""
        if public_url:
            scheme, _, rest = public_url.rstrip("/").partition("://")
            self.public_origin = f"{scheme}://{rest}".lower()
            names.add(_host_name(rest.lower()))
        self.hosts = frozenset(names)

    def host_allowed(self, host_header: str) -> bool:
        """Whether a request's ``Host`` names this console (the port is not compared)."""
        if not host_header:
            return False
        if self.any_host:
            return True
        return _host_name(host_header.lower()) in self.hosts

    def same_origin(self, origin: str, host_header: str, scheme: str) -> bool:
        """Whether ``Origin`` is exactly this console's own origin (or its public one)."""
        if not origin:
            return False
        origin = origin.lower()
        return origin == f"{scheme}://{host_header}".lower() or origin == self.public_origin


def public_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the console's public URL (None when it can)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return "must start with https:// (or http://)"
    host = rest.rstrip("/")
    if not host or any(c in host for c in "/?#@ ") or host.startswith(":"):
        return "must be scheme://host[:port] with no path, query or user"
    return None


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` without the port."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class BoundaryMiddleware:
    """Refuse foreign hosts and cross-origin writes; add the security headers to answers."""

    def __init__(self, app: App, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request line and headers, then pass on (or refuse unread)."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if not self.policy.host_allowed(host):
            await _refuse(
                kind, receive, send, 421, f"this console does not answer to host {host!r}"
            )
            return
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        origin = _header(scope, b"origin")
        writes = kind == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if writes and not self.policy.same_origin(origin, host, scheme):
            await _refuse(
                kind, receive, send, 403, "cross-origin request refused (Origin does not match)"
            )
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if scope.get("path", "").startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def _refuse(kind: str, receive: Receive, send: Send, status: int, text: str) -> None:
    body = text.encode()
    if kind == "websocket":
        # A close before accept: the server answers the handshake with 403, nothing opens.
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
        return
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
