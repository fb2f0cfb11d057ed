"""Sandbox calls on raw v1beta2 stubs, for fault tests that drive real control planes.

Raw stubs rather than a client: a fault test wants to see exactly what the control plane
answered (status codes, frames), with its own short deadlines, and no client retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from tests.support.processes import ControlPlaneProcess

# The command a long-lived test sandbox runs: it exits 0 on SIGTERM, so stops are quick.
IDLE = ["sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait']


@dataclass(frozen=True)
class ExecResult:
    """What one exec ended with: its exit code and output, or the in-band error."""

    exit_code: int | None
    stdout: bytes
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error


class Gateway:
    """Gateway and streaming stubs on one authenticated channel to a control plane."""

    def __init__(self, control_plane: ControlPlaneProcess, api_key: str | None = None) -> None:
        self.channel = control_plane.channel(api_key)
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.streaming = streaming_pb2_grpc.GatewayStreamingServiceStub(self.channel)
        self.started: list[str] = []  # every sandbox started through this object

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(
        self,
        runner_id: str,
        *,
        profile: str = "locked-down",
        argv: list[str] | None = None,
        image: str = "python:3.11",
        timeout: float = 60.0,
    ) -> str:
        """Start a sandbox on ``runner_id``; returns its id once it is RUNNING."""
        sandbox_id = self.create(
            runner_id, profile=profile, argv=argv, image=image, timeout=timeout
        )
        self.wait(sandbox_id, lambda s: s == g.SANDBOX_STATUS_RUNNING, timeout)
        return sandbox_id

    def create(
        self,
        runner_id: str,
        *,
        profile: str = "locked-down",
        argv: list[str] | None = None,
        image: str = "python:3.11",
        timeout: float = 60.0,
    ) -> str:
        """Start a sandbox on ``runner_id``; returns its id as soon as Start answers."""
        command, *args = argv or IDLE
        response = self.gateway.Start(
            g.StartSandboxRequest(
                command=command,
                args=args,
                container_image=image,
                profile_names=[profile],
                runner_ids=[runner_id],
            ),
            timeout=timeout,
        )
        self.started.append(response.sandbox_id)
        return str(response.sandbox_id)

    def stop(self, sandbox_id: str, grace_seconds: int = 1, timeout: float = 60.0) -> None:
        self.gateway.Stop(
            g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=grace_seconds),
            timeout=timeout,
        )

    def list_all(self, **fields: object) -> list[g.SandboxInfo]:
        """Every sandbox List returns (all pages) with these request fields."""
        found: list[g.SandboxInfo] = []
        token = ""
        while True:
            page = self.gateway.List(
                g.ListSandboxesRequest(page_token=token, **fields),  # type: ignore[arg-type]
                timeout=10,
            )
            found.extend(page.sandboxes)
            token = page.next_page_token
            if not token:
                return found

    def write_file(self, sandbox_id: str, path: str, data: bytes, timeout: float = 10.0) -> None:
        self.gateway.AddFile(
            g.AddFileSandboxRequest(sandbox_id=sandbox_id, filepath=path, file_contents=data),
            timeout=timeout,
        )

    def read_file(self, sandbox_id: str, path: str, timeout: float = 10.0) -> bytes:
        response = self.gateway.RetrieveFile(
            g.RetrieveFileSandboxRequest(sandbox_id=sandbox_id, filepath=path), timeout=timeout
        )
        return bytes(response.file_contents)

    def get(self, sandbox_id: str, timeout: float = 10.0) -> g.GetSandboxResponse:
        response: g.GetSandboxResponse = self.gateway.Get(
            g.GetSandboxRequest(sandbox_id=sandbox_id), timeout=timeout
        )
        return response

    def wait(
        self, sandbox_id: str, done: Callable[[int], bool], timeout: float = 60.0
    ) -> g.GetSandboxResponse:
        """Poll until ``done(status)``; fails with the last answer after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.get(sandbox_id)
            if done(got.sandbox_status):
                return got
            assert time.monotonic() < deadline, f"{sandbox_id} still {got}"
            time.sleep(0.05)

    def exec(self, sandbox_id: str, *argv: str, timeout: float = 30.0) -> ExecResult:
        """Run ``argv`` in the sandbox through the control plane; collects stdout."""
        init = streaming_pb2.ExecStreamInit(sandbox_id=sandbox_id, command=list(argv))
        out = b""
        frames = self.streaming.StreamExec(
            iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=timeout
        )
        for frame in frames:
            kind = frame.WhichOneof("response")
            if kind == "output":
                out += frame.output.data
            elif kind == "exit":
                return ExecResult(frame.exit.exit_code, out)
            elif kind == "error":
                return ExecResult(None, out, f"{frame.error.code}: {frame.error.message}")
        return ExecResult(None, out, "stream ended without an exit")

    def exec_until_ok(self, sandbox_id: str, *argv: str, timeout: float = 10.0) -> ExecResult:
        """Retry an exec until it succeeds (e.g. right after a runner came back)."""
        deadline = time.monotonic() + timeout
        last: ExecResult | str = ""
        while time.monotonic() < deadline:
            try:
                last = self.exec(sandbox_id, *argv, timeout=max(1.0, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                last = f"{exc.code()}: {exc.details()}"
            else:
                if last.ok:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"exec {argv} into {sandbox_id} never succeeded: {last}")

    def delete(self, sandbox_id: str, timeout: float = 60.0) -> None:
        self.gateway.Delete(g.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=timeout)

    def delete_started(self) -> list[str]:
        """Delete every sandbox started here; returns the failures (to reap another way)."""
        failed = []
        for sandbox_id in self.started:
            try:
                self.delete(sandbox_id, timeout=20)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    failed.append(f"{sandbox_id}: {exc.code()} {exc.details()}")
        self.started.clear()
        return failed
