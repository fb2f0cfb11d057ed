"""Start real ``sandboxd`` processes for tests and wait until they are ready.

Nothing here is simulated: each helper runs the installed ``sandboxd`` command in a child
process on a free loopback port, and tests talk to it over real gRPC. Authentication is on,
as in production: a control plane's first administrator key is read from its data directory,
runners join with a join token made through the admin API and passed in a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import discovery_pb2, discovery_pb2_grpc
from tests.support.ports import free_port

SANDBOXD = [sys.executable, "-m", "sandboxd"]
ADMIN = "/sandboxd.admin.v1.AdminService/"


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <key>`` to every call on a channel."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(  # type: ignore[attr-defined,no-any-return]
            metadata=[*(details.metadata or ()), *self._metadata]
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)


def keyed_channel(
    target: str,
    api_key: str | None,
    *,
    ca_file: Path | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to ``target`` whose calls carry ``api_key`` (none when it is empty/None).

    With ``ca_file`` the channel speaks TLS and trusts that CA.
    """
    if ca_file is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        channel = grpc.secure_channel(target, creds, options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    if not api_key:
        return channel
    return grpc.intercept_channel(channel, _Bearer(api_key))


def admin_call(
    target: str,
    api_key: str,
    method: str,
    request: Message,
    response_type: type[Message],
    *,
    ca_file: Path | None = None,
) -> Any:
    """Call ``AdminService/<method>`` with ``api_key``."""
    with keyed_channel(target, api_key, ca_file=ca_file) as channel:
        rpc = channel.unary_unary(
            ADMIN + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=30)


def write_secret(path: Path, secret: str) -> Path:
    """A secret in a 0600 file, as an operator would hand it to a runner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return path


@dataclass
class Proc:
    """A child process whose output is collected in the background."""

    args: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)

    def start(self) -> Proc:
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line starting with {prefix!r}; output:\n{self.output}")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CWSANDBOX_API_KEY", None)
    env.update(extra)
    return env


@dataclass
class ControlPlaneProcess:
    """A ``sandboxd controlplane`` child process, with authentication on.

    After :meth:`start`, ``admin_key`` is its first administrator key and ``join_token`` a
    many-use join token that :class:`RunnerProcess` hands to runners by default.
    """

    data_dir: Path
    config: Path | None = None
    health_timeout: float = 10.0
    heartbeat_interval: float = 0.5
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None
    extra_args: Sequence[str] = ()
    # ``--database-url`` (empty: SQLite in the data directory).
    database_url: str = ""
    port: int = field(default_factory=free_port)
    # Where it listens (plaintext): loopback by default; a test network's address for runners
    # in other network namespaces (tests/support/hosts.py).
    listen_host: str = "127.0.0.1"
    proc: Proc | None = None
    admin_key: str = ""
    join_token: str = ""

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def host(self) -> str:
        # TLS test certificates name "localhost"; plaintext tests use the address.
        return "localhost" if self.tls_cert is not None else self.listen_host

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ControlPlaneProcess:
        args = [
            *SANDBOXD, "controlplane",
            "--listen", f"{self.listen_host}:{self.port}",
            "--data-dir", str(self.data_dir),
            "--health-timeout", str(self.health_timeout),
            "--heartbeat-interval", str(self.heartbeat_interval),
            *self.extra_args,
        ]  # fmt: skip
        if self.config is not None:
            args += ["--config", str(self.config)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        self.proc = Proc(args, child_env()).start()
        self.proc.wait_for_line("CWSANDBOX_BASE_URL=")
        self.admin_key = (self.data_dir / "admin-key").read_text().strip()
        if not self.join_token:
            self.join_token = self.create_join_token(max_uses=1000, ttl_seconds=24 * 3600)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to runners or clients, nothing flushed."""
        assert self.proc is not None
        self.proc.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.popen.pid

    def admin(self, method: str, request: Message, response_type: type[Message]) -> Any:
        """Call the admin API with the administrator key."""
        return admin_call(
            self.target, self.admin_key, method, request, response_type, ca_file=self.ca_file
        )

    def create_join_token(self, **fields: Any) -> str:
        request = admin_pb2.CreateJoinTokenRequest(**fields)
        return str(self.admin("CreateJoinToken", request, admin_pb2.CreateJoinTokenResponse).secret)

    def create_key(self, organization: str, role: str = "member", name: str = "") -> str:
        request = admin_pb2.CreateApiKeyRequest(
            organization=organization,
            role=admin_pb2.ROLE_ADMIN if role == "admin" else admin_pb2.ROLE_MEMBER,
            name=name,
        )
        return str(self.admin("CreateApiKey", request, admin_pb2.CreateApiKeyResponse).secret)

    def channel(self, api_key: str | None = None) -> grpc.Channel:
        """A channel whose calls carry ``api_key`` (None: the admin key; "": no key)."""
        key = self.admin_key if api_key is None else api_key
        return keyed_channel(self.target, key, ca_file=self.ca_file)

    @contextlib.contextmanager
    def discovery(self, api_key: str | None = None) -> Iterator[DiscoveryClient]:
        """Discovery calls with ``api_key`` (None: the admin key; "": no key at all)."""
        key = self.admin_key if api_key is None else api_key
        channel = keyed_channel(self.target, None, ca_file=self.ca_file)
        try:
            yield DiscoveryClient(discovery_pb2_grpc.DiscoveryServiceStub(channel), key)
        finally:
            channel.close()


@dataclass
class DiscoveryClient:
    """Raw DiscoveryService calls, for checking the wire contract itself."""

    stub: discovery_pb2_grpc.DiscoveryServiceStub
    api_key: str | None = None

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.api_key}")] if self.api_key else []

    def list_runners(self, **fields: object) -> discovery_pb2.ListAvailableRunnersResponse:
        request = discovery_pb2.ListAvailableRunnersRequest(**fields)  # type: ignore[arg-type]
        return self.stub.ListAvailableRunners(request, timeout=10, metadata=self._metadata)

    def all_runners(self, **fields: object) -> list[discovery_pb2.AvailableRunner]:
        runners: list[discovery_pb2.AvailableRunner] = []
        token = ""
        while True:
            page = self.list_runners(page_token=token, **fields)
            runners.extend(page.runners)
            token = page.next_page_token
            if not token:
                return runners

    def get_runner(self, runner_id: str, **fields: object) -> discovery_pb2.AvailableRunner:
        request = discovery_pb2.GetAvailableRunnerRequest(runner_id=runner_id, **fields)  # type: ignore[arg-type]
        return self.stub.GetAvailableRunner(request, timeout=10, metadata=self._metadata)

    def list_profiles(self, **fields: object) -> discovery_pb2.ListProfilesResponse:
        request = discovery_pb2.ListProfilesRequest(**fields)  # type: ignore[arg-type]
        return self.stub.ListProfiles(request, timeout=10, metadata=self._metadata)

    def all_profiles(self, **fields: object) -> list[discovery_pb2.ProfileSummary]:
        profiles: list[discovery_pb2.ProfileSummary] = []
        token = ""
        while True:
            page = self.list_profiles(page_token=token, **fields)
            profiles.extend(page.profiles)
            token = page.next_page_token
            if not token:
                return profiles

    def get_profile(self, profile_name: str, runner_id: str = "") -> discovery_pb2.ProfileSummary:
        request = discovery_pb2.GetProfileRequest(profile_name=profile_name, runner_id=runner_id)
        return self.stub.GetProfile(request, timeout=10, metadata=self._metadata)

    def wait_for(
        self, runner_id: str, *, healthy: bool, timeout: float = 20.0
    ) -> tuple[discovery_pb2.AvailableRunner, float]:
        """Poll until the runner is listed with the wanted health; returns it and seconds waited."""
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            for runner in self.all_runners():
                if runner.runner_id == runner_id:
                    last = runner
                    if runner.healthy == healthy:
                        return runner, time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"runner {runner_id} not healthy={healthy} in {timeout}s: {last}")


@dataclass
class RunnerProcess:
    """A ``sandboxd runner`` child process.

    Its join token (the control plane's shared test token unless ``join_token`` is given) is
    written to a 0600 file next to its state directory and passed with ``--join-token-file``.
    """

    control_plane: ControlPlaneProcess
    state_dir: Path
    runner_id: str | None = None
    group: str = "default"
    tags: Sequence[str] = ()
    join_token: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    # A command the runner's argv is appended to, e.g. ``nsenter --net=...`` to run it in
    # another network namespace (tests/support/hosts.py); it must exec, not fork.
    wrapper: Sequence[str] = ()
    proc: Proc | None = None

    def start(self) -> RunnerProcess:
        """Start it (again: a restart on the same state directory after stop or kill)."""
        token = self.join_token if self.join_token is not None else self.control_plane.join_token
        token_file = write_secret(self.state_dir.with_name(self.state_dir.name + ".token"), token)
        args = [
            *SANDBOXD, "runner",
            "--control-plane", self.control_plane.url,
            "--group", self.group,
            "--state-dir", str(self.state_dir),
            "--join-token-file", str(token_file),
            "--heartbeat-interval", str(self.control_plane.heartbeat_interval),
            *self.extra_args,
        ]  # fmt: skip
        if self.control_plane.ca_file is not None:
            args += ["--ca-file", str(self.control_plane.ca_file)]
        if self.runner_id:
            args += ["--runner-id", self.runner_id]
        for tag in self.tags:
            args += ["--tag", tag]
        self.proc = Proc([*self.wrapper, *args], child_env(**self.extra_env)).start()
        return self

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 10 s), once a runner that is joining has stored its credential."""
        assert self.proc is not None
        self._let_join_finish()
        return self.proc.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the control plane, sandboxes left running.

        Like :meth:`stop`, it first lets a joining runner store its credential.
        """
        assert self.proc is not None
        self._let_join_finish()
        self.proc.kill()

    def _let_join_finish(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until a live runner has written its credential file.

        Why: tests that restart a runner mean one that finished joining. A runner now stores
        the credential it proposes before it sends its join (``agent._propose``), so this
        returns at once unless the runner has not reached its first join yet. A runner that
        exits (refused) or never joins within ``timeout`` is stopped anyway.
        """
        assert self.proc is not None
        credential = self.state_dir / "runner-credential"
        deadline = time.monotonic() + timeout
        while not credential.exists() and self.proc.popen.poll() is None:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)


@dataclass(frozen=True)
class Up:
    """A running ``sandboxd up``: its process and what it printed for clients."""

    proc: Proc
    base_url: str
    api_key: str

    def env(self, **extra: str) -> dict[str, str]:
        """A child environment pointed at it, with its administrator key."""
        return child_env(CWSANDBOX_BASE_URL=self.base_url, CWSANDBOX_API_KEY=self.api_key, **extra)


def printed(proc: Proc, name: str) -> str:
    """The value of the ``NAME=value`` line ``proc`` printed (it must have printed one)."""
    return proc.wait_for_line(f"{name}=", timeout=5).split("=", 1)[1]


@contextlib.contextmanager
def all_in_one(data_dir: Path, *extra_args: str) -> Iterator[Up]:
    """A running ``sandboxd up`` on a free loopback port."""
    port = free_port()
    proc = Proc(
        [*SANDBOXD, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
         *extra_args],
        child_env(),
    ).start()  # fmt: skip
    try:
        base_url = proc.wait_for_line("CWSANDBOX_BASE_URL=", timeout=600).split("=", 1)[1]
        yield Up(proc, base_url, printed(proc, "CWSANDBOX_API_KEY"))
    finally:
        proc.stop()
