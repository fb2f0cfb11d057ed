"""The control plane process: one grpc.aio server for clients and runners.

Why one port: clients (public v1beta2 API), administrators (AdminService) and runners
(internal RunnerService) reach the same address, so a runner only needs the URL clients already
use. Every call passes the authentication interceptor first (:mod:`sandboxd.controlplane.auth`):
API keys for clients and administrators, runner credentials or a join token for runners.

Why the data directory is 0700 and its secrets 0600: it holds the database (credential
digests, every sandbox's record), the first administrator key and the key that encrypts
secret values (``secrets.key``); other local users must not read any of them. With
``tls_cert``/``tls_key`` the port speaks TLS only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from sandboxd.config import PlatformConfig
from sandboxd.controlplane.admin_service import AdminService
from sandboxd.controlplane.auth import AuthInterceptor
from sandboxd.controlplane.connection_events import ConnectionEvents
from sandboxd.controlplane.discovery import DiscoveryService
from sandboxd.controlplane.event_journal import EventJournal
from sandboxd.controlplane.event_service import EventService
from sandboxd.controlplane.events import EventLog, EventsInterceptor
from sandboxd.controlplane.files import Files, FileService
from sandboxd.controlplane.fss_gateway import FssGateway
from sandboxd.controlplane.gateway import GatewayService
from sandboxd.controlplane.identity_service import IdentityService
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.live_config import LiveConfig, startup_config
from sandboxd.controlplane.local_link import LocalRunners
from sandboxd.controlplane.malformed import MalformedRequestInterceptor
from sandboxd.controlplane.method_table import MethodTable
from sandboxd.controlplane.metrics import (
    ControlPlaneMetrics,
    MetricsInterceptor,
    PlatformCollector,
    timed_store,
)
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.raw_frames import add_services
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_lifecycle import Drainer, RunnerLifecycle
from sandboxd.controlplane.runner_service import RunnerService
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.secret_store_service import SecretStoreService
from sandboxd.controlplane.secrets import open_secrets
from sandboxd.controlplane.snapshot_stops import stop_after_lost_snapshots
from sandboxd.controlplane.start_moves import StartMoves
from sandboxd.controlplane.streaming import StreamingService
from sandboxd.controlplane.v1.resources_db import V1Resources
from sandboxd.controlplane.v1.services import add_v1_services
from sandboxd.errors import ApiError
from sandboxd.metrics_http import MetricsServer, serve_metrics
from sandboxd.secrets.cipher import KeyProblem
from sandboxd.snapshots.content import ContentStore
from sandboxd.snapshots.service import Snapshots
from sandboxd.store import BatchedRunnerWriter, Store
from sandboxd.store.schema import DatabaseProblem, describe
from sandboxd.volumes.service import Volumes
from sandboxd_protocol.sandboxd_v1 import admin_pb2_grpc, events_pb2_grpc
from sandboxd_protocol.v1beta2 import (
    discovery_pb2_grpc,
    gateway_pb2_grpc,
    secrets_pb2_grpc,
    streaming_pb2_grpc,
)

if TYPE_CHECKING:
    from sandboxd.console.server import ConsoleServer

log = logging.getLogger(__name__)

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
COLLECT_INTERVAL_SECONDS = 600.0
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
    # A fixed 4 MiB receive window per stream, not one grown from the bandwidth-delay
    # estimate: on loopback that estimate keeps growing while the server reads fast, and
    # with it what the server buffers for each stream, also for requests it refuses (huge
    # unauthenticated ones took 55-60 MiB more per few rounds in 2 of 5 runs; 8 MiB at
    # most with the pin). 4 MiB is what gRPC grants anyway; 1 GiB transfers kept their
    # speed in alternating runs.
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
]


@dataclass(frozen=True)
class ControlPlaneSettings:
    """How to run a control plane; every field has a safe local default.

    ``insecure_no_auth`` opens the public and admin APIs to anyone who can reach the port
    (every call acts as an administrator); runners still need credentials.
    """

    data_dir: Path
    config: PlatformConfig
    listen: str = "127.0.0.1:50051"
    health_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    database_url: str = field(default="")
    insecure_no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sandbox_retention_seconds: float = DEFAULT_RETENTION_SECONDS
    # The file ``config`` was loaded from (``--config``); None: the embedded default, which
    # the configuration applied last (``sandboxd config apply``) replaces (live_config.py).
    config_path: Path | None = None
    # ``host:port`` for Prometheus metrics (``/metrics``); None: not served (metrics.py).
    metrics_listen: str | None = None
    # ``host:port`` for the web console (sandboxd.console); None: not served.
    console_listen: str | None = None
    # The console's address as browsers see it behind a TLS-terminating proxy (None: direct).
    console_public_url: str | None = None
    # The CA that signed ``tls_cert``, which the console trusts on loopback (None: the
    # certificate itself, as for a self-signed one).
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")


EVENT_JOURNAL = "events.journal"
"""Trail events not yet in the database, in the data directory (``event_journal.py``)."""


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory, or narrow an existing one, to its owner only (0700)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; errors name the file that could not be read."""
    pair = []
    for path in (key, cert):
        try:
            pair.append(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return grpc.ssl_server_credentials([(pair[0], pair[1])])


class ControlPlane:
    """A running control plane: registry, store, and the gRPC server serving them."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        prepare_data_dir(settings.data_dir)
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
        self.metrics = ControlPlaneMetrics() if settings.metrics_listen else None
        store = self.store.sandboxes
        if self.metrics is not None:
            store = timed_store(store, self.metrics)
        self.sandboxes = SandboxRecords(store, self.registry)
        try:  # the key in the data directory (secrets.key, 0600), checked against the rows
            self.secrets = open_secrets(self.store.secrets, settings.data_dir)
        except KeyProblem as problem:
            self.store.close()
            raise DatabaseProblem(f"secret stores: {problem}") from None
        except SQLAlchemyError as exc:
            self.store.close()
            where = describe(self.store.url)
            raise DatabaseProblem(f"cannot read {where}: {exc}") from None
        self.start_moves = StartMoves(self.sandboxes, self.registry)
        self.reconcilers = Reconcilers(
            self.sandboxes, self.registry, self.secrets, move_start=self.start_moves.move
        )
        self.lifecycle = Lifecycle(
            self.registry,
            self.sandboxes,
            Quotas(settings.config.quotas),
            self.reconcilers,
            self.secrets,
            moves=self.start_moves,
        )
        self._also_on_change(self.start_moves.observe_record)
        self.cluster_id = ""
        self._collector: asyncio.Task[None] | None = None
        self.operations = Operations(self.registry)
        self.files = Files(self.lifecycle, self.operations)
        self.metrics_port = 0
        self._metrics_server: MetricsServer | None = None
        # More registries to serve beside /metrics (``sandboxd up`` adds its runner's).
        self.metrics_routes: dict[str, CollectorRegistry] = {}
        if self.metrics is not None:
            self.metrics.registry.register(
                PlatformCollector(
                    self.registry,
                    self.sandboxes,
                    self.operations,
                    self.reconcilers,
                    self.start_moves,
                )
            )
            self._also_on_change(self.metrics.observe_record)
        # The activity trail (events.py): every record change, and calls on sandboxes.
        # Events wait in a local journal until stored, so a SIGKILL loses none of them.
        self.events = EventLog(
            self.store.events, self.sandboxes, EventJournal(settings.data_dir / EVENT_JOURNAL)
        )
        self._also_on_change(self.events.observe_record)
        self.sandboxes.on_show = self.events.observe_shown  # RUNNING, the moment it shows
        self.identity = IdentityService(self.store.identity)
        self.runner_lifecycle = RunnerLifecycle(
            self.registry, self.lifecycle, self._persist_runner, self._delete_runner_row
        )
        self.drainer = Drainer(self.registry, self.runner_lifecycle)
        self.live_config: LiveConfig | None = None  # set by start(), from the store
        self.v1_resources = V1Resources(self.store.v1)
        self.snapshots = Snapshots(
            self.store.snapshots,
            ContentStore(settings.data_dir),
            self.lifecycle,
            self.operations,
        )
        self.volumes = Volumes(self.store.volumes, self.registry, self.sandboxes)
        self.admin_key = ""  # set by start(), once the database has been read whole
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.console: ConsoleServer | None = None  # set by start() with console_listen
        # In-process links for a runner of this process (``sandboxd up``), set by start().
        self.local_runners: LocalRunners | None = None

    def _also_on_change(self, observe: Callable[[SandboxRecord], None]) -> None:
        """Call ``observe`` on every record change, before what already ran (the reconciler)."""
        then = self.sandboxes.on_change

        def both(record: SandboxRecord) -> None:
            observe(record)
            then(record)

        self.sandboxes.on_change = both

    async def _persist_runner(self, runner_id: str) -> None:
        """Write a runner's row now (an administrator's change is stored before the answer)."""
        if self.writer is not None:
            self.writer.mark(runner_id)
            await self.writer.flush()

    async def _delete_runner_row(self, runner_id: str) -> bool:
        return await asyncio.to_thread(self.store.delete_runner, runner_id)

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (with the real port when 0 was asked for)."""
        host = self.settings.listen.rsplit(":", 1)[0]
        # A wildcard bind is reached through loopback from this machine.
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
        return f"{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the port speaks TLS."""
        return self.settings.tls_cert is not None

    @property
    def base_url(self) -> str:
        """The URL clients put in ``CWSANDBOX_BASE_URL``."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    async def _load(self) -> None:
        """Runners, live sandboxes and the cluster id; DatabaseProblem (one line) if unreadable."""
        where = describe(self.store.url)
        try:
            config, live = await asyncio.to_thread(
                startup_config, self.store.config, self.settings.config_path, self.settings.config
            )
            if config is not self.settings.config:
                self.registry.reload(config)
                self.lifecycle.quotas.reconfigure(config.quotas)
                log.info("using the configuration applied last (revision %d)", live.revision)
            self.live_config = LiveConfig(
                self.registry,
                self.lifecycle.quotas,
                self.store.config,
                self.settings.heartbeat_interval,
                live,
            )
            self.registry.restore(self.store.load_runners())
            await self.sandboxes.load()
            self.events.seed(self.sandboxes.live())  # so only changes from here are noted
            await self.events.recover()  # what a killed predecessor had not stored yet
            # A stop that waited for one of them happens now (snapshot_stops.py).
            failed = await self.snapshots.fail_unfinished()
            await stop_after_lost_snapshots(self.sandboxes, failed)
            await self.volumes.fail_unfinished()
            self.cluster_id = await self.sandboxes.cluster_id()
        except DatabaseProblem:
            raise
        except ApiError as error:
            if error.code is grpc.StatusCode.DATA_LOSS:
                raise DatabaseProblem(error.message) from None
            raise DatabaseProblem(f"cannot read {where}: {error.message}") from None
        except (SQLAlchemyError, ValueError, DecodeError, OSError) as exc:
            raise DatabaseProblem(f"cannot read {where}: {exc}; restore it from a backup") from None

    async def start(self) -> None:
        """Restore persisted runners, bind the port and start serving."""
        await self._load()
        # The first administrator key, in <data_dir>/admin-key (0600); after _load, so that
        # nothing is written to a database that is then refused.
        self.admin_key = self.identity.ensure_admin_key(self.settings.data_dir)
        self.writer = BatchedRunnerWriter(self.store, self.registry.record)
        self.writer.start()
        auth = AuthInterceptor(self.identity, insecure_no_auth=self.settings.insecure_no_auth)
        interceptors: list[Any] = [
            auth,
            MalformedRequestInterceptor(),
            EventsInterceptor(self.events, self.sandboxes),  # inside auth: knows the caller
        ]
        if self.metrics is not None:  # outermost: refused calls are counted too
            interceptors.insert(0, MetricsInterceptor(self.metrics))
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        table = MethodTable()  # one handler for every method (method_table.py says why)
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.discovery, table
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(  # type: ignore[no-untyped-call]
            GatewayService(
                self.lifecycle,
                self.files,
                self.operations,
                FssGateway(self.snapshots, self.lifecycle),
            ),
            table,
        )
        streaming_pb2_grpc.add_GatewayStreamingServiceServicer_to_server(  # type: ignore[no-untyped-call]
            StreamingService(self.lifecycle, self.operations), table
        )
        # coreweave.sandbox.v1 (the official 0.27+ clients) on the same port and plumbing.
        add_v1_services(
            table,
            registry=self.registry,
            lifecycle=self.lifecycle,
            files=self.files,
            operations=self.operations,
            snapshots=self.snapshots,
            resources=self.v1_resources,
            volumes=self.volumes,
        )
        runners = RunnerService(
            self.registry,
            self.identity,
            self.settings.heartbeat_interval,
            self.lifecycle,
            cluster_id=self.cluster_id,
            connections=ConnectionEvents(self.events, self.sandboxes, self.metrics),
        )
        self.local_runners = LocalRunners(runners, auth.identify)
        # File bytes pass through both as they were encoded (raw_frames.py).
        add_services(runners, FileService(self.lifecycle, self.files), table)
        events_pb2_grpc.add_EventServiceServicer_to_server(  # type: ignore[no-untyped-call]
            EventService(self.events, self.sandboxes), table
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
            AdminService(
                self.identity,
                self.registry,
                self.lifecycle,
                self.operations,
                runners=self.runner_lifecycle,
                config=self.live_config,
                secrets=self.secrets,
            ),
            table,
        )
        secrets_pb2_grpc.add_SecretStoreServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SecretStoreService(self.secrets), table
        )
        table.install(server)
        cert, key = self.settings.tls_cert, self.settings.tls_key
        if cert is not None and key is not None:
            credentials = server_credentials(cert, key)
            self.port = server.add_secure_port(self.settings.listen, credentials)
        else:
            self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        if self.metrics is not None and self.settings.metrics_listen:
            routes = {"/metrics": self.metrics.registry, **self.metrics_routes}
            self._metrics_server = serve_metrics(self.settings.metrics_listen, routes)
            self.metrics_port = self._metrics_server.port
            log.info("metrics on http://%s/metrics", self.metrics_address)
        if self.settings.console_listen:
            from sandboxd.console.server import ConsoleServer, ConsoleTarget
            from sandboxd.console.stats import runner_stats

            # Over TLS by name: local certificates name "localhost", not the address.
            address = f"localhost:{self.port}" if self.tls else self.address
            target = ConsoleTarget(address, self.settings.tls_ca or self.settings.tls_cert)
            self.console = ConsoleServer(
                self.settings.console_listen,
                target,
                self.identity,
                stats=runner_stats(self.registry),  # each sandbox's graphs, from its runner
                public_url=self.settings.console_public_url,
            )
            await self.console.start()
        # Sandboxes of runners that never come back still converge (their starts time out).
        self.reconcilers.kick_all()
        self._collector = asyncio.create_task(self._collect(), name="collect-sandboxes")
        self.drainer.start()  # drains persisted by an earlier run go on
        self.events.start()
        log.info("control plane listening on %s (cluster %s)", self.base_url, self.cluster_id)

    async def _collect(self) -> None:
        """Delete sandboxes that ended more than the retention ago, now and then."""
        retention = timedelta(seconds=self.settings.sandbox_retention_seconds)
        while True:
            try:
                removed = await self.sandboxes.collect(retention)
                await self.events.collect(datetime.now(UTC) - retention)
                if removed:
                    log.info("collected %d sandbox record(s) past their retention", removed)
            except ApiError as error:
                log.warning("collecting old sandbox records failed: %s", error.message)
            await asyncio.sleep(COLLECT_INTERVAL_SECONDS)

    @property
    def metrics_address(self) -> str:
        """``host:port`` of ``/metrics`` (with the real port when 0 was asked for)."""
        host = (self.settings.metrics_listen or "").rsplit(":", 1)[0] or "127.0.0.1"
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        return f"{host}:{self.metrics_port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, flush runner records and close the store."""
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if self.local_runners is not None:
            self.local_runners.stop()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        await self.drainer.stop()
        await self.events.stop()
        await self.reconcilers.close()
        await self.snapshots.close()
        await self.volumes.close()
        if self.writer is not None:
            await self.writer.stop()
        self.sandboxes.close()
        self.v1_resources.close()
        self.store.close()

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()
