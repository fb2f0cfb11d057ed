"""Serving the console: uvicorn inside the control plane's own process and event loop.

Why in the same loop: the console is a thin layer over the gRPC API on loopback, so it needs
no process, thread or port of its own beyond the HTTP listener; it starts and stops with the
control plane. uvicorn's own signal handling is switched off: SIGINT/SIGTERM belong to
sandboxd, which stops the console as part of its orderly shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from sandboxd.console.app import STATIC_DIR, ConsoleContext, build_app
from sandboxd.console.platform import Platform
from sandboxd.console.security import OriginPolicy
from sandboxd.console.sessions import LoginLimiter, SessionStore
from sandboxd.console.stats import StatsSource
from sandboxd.controlplane.identity_service import IdentityService

log = logging.getLogger(__name__)

MAX_WEBSOCKET_MESSAGE_BYTES = 1024 * 1024
STARTUP_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 65
"""How long an idle browser connection stays open (uvicorn's default is 5 s).

Why longer: a request the browser sends on a kept-alive connection just as the server
closes it fails ("Failed to fetch"). With 5 s, the connections a page leaves idle between
its rounds of reads were closed under it every few seconds; browsers give up idle
connections they never reused after 10 s, so those now end on the browser's side.
"""


class _QuietSignalsServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM belong to sandboxd; uvicorn must not take them over."""
        yield


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) as host and port; ValueError naming the flag."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--console-listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class ConsoleTarget:
    """How the console reaches the gRPC API: the control plane's address and its TLS, if any."""

    address: str
    tls_ca: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials that trust ``tls_ca`` (the certificate), or None for plaintext."""
        if self.tls_ca is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())


class ConsoleServer:
    """The web console, listening on ``listen`` until :meth:`stop`."""

    def __init__(
        self,
        listen: str,
        target: ConsoleTarget,
        identity: IdentityService,
        stats: StatsSource | None = None,
        *,
        static_dir: Path = STATIC_DIR,
        public_url: str | None = None,
    ) -> None:
        """``public_url``: the address browsers use through a TLS-terminating proxy, if any."""
        self._host, self._port = split_listen(listen)
        self.platform = Platform(target.address, target.credentials())
        self.context = ConsoleContext(
            platform=self.platform,
            identity=identity,
            sessions=SessionStore(),
            limiter=LoginLimiter(),
            stats=stats,
            secure_cookie=bool(public_url and public_url.startswith("https://")),
        )
        self._policy = OriginPolicy(self._host, public_url)
        self.public_url = public_url
        self._static_dir = static_dir
        self._server: _QuietSignalsServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The console's address for a browser on this machine."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self._host, self._host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind the port and serve; OSError naming the address if it cannot be bound."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            where = f"{self._host}:{self._port}"
            raise OSError(f"--console-listen: cannot listen on {where}: {exc}") from exc
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        app = build_app(self.context, self._policy, self._static_dir)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            ws_max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
        self._server = _QuietSignalsServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        async with asyncio.timeout(STARTUP_TIMEOUT_SECONDS):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise OSError("the console stopped while starting")
                await asyncio.sleep(0.01)
        if self.public_url:
            log.info("web console on %s (browsers: %s)", self.url, self.public_url)
        else:
            log.info("web console on %s", self.url)

    async def stop(self) -> None:
        """Stop serving (open sockets are closed) and close the gRPC channel."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5.0)
        self._server = None
        self._task = None
        await self.platform.close()
