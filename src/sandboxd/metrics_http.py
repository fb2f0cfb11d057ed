"""The HTTP endpoint Prometheus scrapes: one or more registries, each at its own path.

Why our own small server around prometheus_client's WSGI app: ``sandboxd up`` runs a control
plane and a runner in one process, and their metrics must stay apart (the control plane's
carry no per-sandbox labels, the runner's do): ``/metrics`` and ``/metrics/runner`` on one
port. A thread per scrape, so a slow scrape never waits on the event loop or another scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["MetricsServer", "serve_metrics"]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log: say nothing."""


class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on (the real one when 0 was asked for)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(listen: str, routes: Mapping[str, CollectorRegistry]) -> MetricsServer:
    """Serve each registry at its path on ``http://listen`` in a background thread."""
    host, _, port = listen.rpartition(":")
    apps = {path: make_wsgi_app(registry) for path, registry in routes.items()}

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        found = apps.get(environ.get("PATH_INFO", "").rstrip("/") or "/")
        if found is None:
            start("404 Not Found", [("Content-Type", "text/plain")])
            return [f"not found; metrics are at {', '.join(sorted(apps))}\n".encode()]
        return found(environ, start)  # type: ignore[no-any-return]

    server = make_server(
        host.strip("[]") or "127.0.0.1",
        int(port),
        app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
