"""The control plane process: one grpc.aio server for clients and runners.

Why one port: clients (public v1beta2 API) and runners (internal RunnerService) reach the same
address, so a runner only needs the URL clients already use. Public calls pass the API-key
interceptor; runner calls prove themselves with the join token.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cwsandbox._proto import discovery_pb2_grpc, gateway_pb2_grpc, streaming_pb2_grpc
from sandboxd._proto import runner_pb2_grpc
from sandboxd.config import PlatformConfig
from sandboxd.controlplane.auth import ApiKeyInterceptor
from sandboxd.controlplane.discovery import DiscoveryService
from sandboxd.controlplane.exec_bridge import ExecSessions
from sandboxd.controlplane.gateway import GatewayService
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.malformed import MalformedRequestInterceptor
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_service import RunnerService
from sandboxd.controlplane.sandboxes import SandboxTable
from sandboxd.controlplane.streaming import StreamingService
from sandboxd.store import BatchedRunnerWriter, Store

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 100 * 1024 * 1024  # what the official client allows (v1beta2.md §1)

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Notice dead runner connections even when nothing is sent.
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ControlPlaneSettings:
    """How to run a control plane; every field has a safe local default."""

    data_dir: Path
    config: PlatformConfig
    listen: str = "127.0.0.1:50051"
    join_token: str = ""
    api_keys: tuple[str, ...] = ()
    health_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    database_url: str = field(default="")


def load_or_create_join_token(data_dir: Path) -> str:
    """The join token kept in ``<data_dir>/join-token`` (0600), created on first use."""
    path = data_dir / "join-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


class ControlPlane:
    """A running control plane: registry, store, and the gRPC server serving them."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        self.join_token = settings.join_token or load_or_create_join_token(settings.data_dir)
        self.store = (
            Store(settings.database_url)
            if settings.database_url
            else Store.sqlite(settings.data_dir / "controlplane.db")
        )
        self.writer: BatchedRunnerWriter | None = None
        self.registry = RunnerRegistry(
            settings.config,
            health_timeout=settings.health_timeout,
            on_change=lambda runner_id: self.writer.mark(runner_id) if self.writer else None,
        )
        self.discovery = DiscoveryService(self.registry)
        self.sandboxes = SandboxTable(self.store, self.registry)
        self.lifecycle = Lifecycle(self.registry, self.sandboxes)
        self.exec_sessions = ExecSessions()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (with the real port when 0 was asked for)."""
        host = self.settings.listen.rsplit(":", 1)[0]
        # A wildcard bind is reached through loopback from this machine.
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL clients put in ``CWSANDBOX_BASE_URL``."""
        return f"http://{self.address}"

    async def start(self) -> None:
        """Restore persisted runners, bind the port and start serving."""
        self.registry.restore(self.store.load_runners())
        self.sandboxes.restore()
        self.writer = BatchedRunnerWriter(self.store, self.registry.record)
        self.writer.start()
        server = grpc.aio.server(
            interceptors=[ApiKeyInterceptor(self.settings.api_keys), MalformedRequestInterceptor()],
            options=SERVER_OPTIONS,
        )
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.discovery, server
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(  # type: ignore[no-untyped-call]
            GatewayService(self.lifecycle), server
        )
        streaming_pb2_grpc.add_GatewayStreamingServiceServicer_to_server(  # type: ignore[no-untyped-call]
            StreamingService(self.lifecycle, self.exec_sessions), server
        )
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            RunnerService(
                self.registry,
                self.join_token,
                self.settings.heartbeat_interval,
                self.lifecycle,
                self.exec_sessions,
            ),
            server,
        )
        self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        log.info("control plane listening on %s", self.base_url)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, flush runner records and close the store."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.writer is not None:
            await self.writer.stop()
        self.sandboxes.close()
        self.store.close()

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()
