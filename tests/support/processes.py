"""Start real ``sandboxd`` processes for tests and wait until they are ready.

Nothing here is simulated: each helper runs the installed ``sandboxd`` command in a child
process on a free loopback port, and tests talk to it over real gRPC.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cwsandbox._proto import discovery_pb2, discovery_pb2_grpc

SANDBOXD = [sys.executable, "-m", "sandboxd"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    """A ``sandboxd controlplane`` child process."""

    data_dir: Path
    config: Path | None = None
    join_token: str = "test-join-token"
    health_timeout: float = 10.0
    heartbeat_interval: float = 0.5
    api_keys: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ControlPlaneProcess:
        args = [
            *SANDBOXD, "controlplane",
            "--listen", self.target,
            "--data-dir", str(self.data_dir),
            "--join-token", self.join_token,
            "--health-timeout", str(self.health_timeout),
            "--heartbeat-interval", str(self.heartbeat_interval),
        ]  # fmt: skip
        if self.config is not None:
            args += ["--config", str(self.config)]
        for key in self.api_keys:
            args += ["--api-key", key]
        self.proc = Proc(args, child_env()).start()
        self.proc.wait_for_line("CWSANDBOX_BASE_URL=")
        return self

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()

    @contextlib.contextmanager
    def discovery(self, api_key: str | None = None) -> Iterator[DiscoveryClient]:
        channel = grpc.insecure_channel(self.target)
        try:
            yield DiscoveryClient(discovery_pb2_grpc.DiscoveryServiceStub(channel), api_key)
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
    """A ``sandboxd runner`` child process."""

    control_plane: ControlPlaneProcess
    state_dir: Path
    runner_id: str | None = None
    group: str = "default"
    tags: Sequence[str] = ()
    join_token: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    def start(self) -> RunnerProcess:
        args = [
            *SANDBOXD, "runner",
            "--control-plane", self.control_plane.url,
            "--group", self.group,
            "--state-dir", str(self.state_dir),
            "--join-token", self.join_token or self.control_plane.join_token,
            "--heartbeat-interval", str(self.control_plane.heartbeat_interval),
        ]  # fmt: skip
        if self.runner_id:
            args += ["--runner-id", self.runner_id]
        for tag in self.tags:
            args += ["--tag", tag]
        self.proc = Proc(args, child_env(**self.extra_env)).start()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()


@contextlib.contextmanager
def all_in_one(data_dir: Path, *extra_args: str) -> Iterator[tuple[Proc, str]]:
    """A running ``sandboxd up`` on a free loopback port; yields it and its base URL."""
    port = free_port()
    proc = Proc(
        [*SANDBOXD, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
         *extra_args],
        child_env(),
    ).start()  # fmt: skip
    try:
        line = proc.wait_for_line("CWSANDBOX_BASE_URL=", timeout=600)
        yield proc, line.split("=", 1)[1]
    finally:
        proc.stop()
