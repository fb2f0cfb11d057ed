"""Attacks from inside a sandbox created through the whole platform; each must fail.

The backend's own suite (tests/backends) tries every attack on the backend directly; these
check that the guardrails survive the trip client → control plane → runner → backend.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cwsandbox import ResourceOptions, Sandbox, SandboxDefaults
from tests.e2e.conftest import Platform


@pytest.fixture
def defaults(platform: Platform) -> SandboxDefaults:
    return SandboxDefaults(base_url=platform.base_url, tags=("isolation-e2e",))


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on host loopback that answers 'secret' to whoever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = int(server.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"secret")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


def test_egress_none_cannot_reach_host_loopback(
    platform: Platform, defaults: SandboxDefaults, host_service: int
) -> None:
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(2)\n"
        f"try:\n    s.connect(('127.0.0.1',{host_service})); print(s.recv(10))\n"
        "except OSError as e:\n    print('blocked', type(e).__name__)\n"
    )
    with Sandbox.run(profile_names=["locked-down"], defaults=defaults) as sandbox:
        result = sandbox.exec(["python3", "-c", probe]).result()
    assert result.stdout.startswith("blocked"), result.stdout + result.stderr
    assert "secret" not in result.stdout


def test_sandbox_sees_only_its_own_processes(defaults: SandboxDefaults) -> None:
    with Sandbox.run(defaults=defaults) as sandbox:
        pids = sandbox.exec(["sh", "-c", "ls /proc | grep -E '^[0-9]+$'"]).result().stdout.split()
        host_file = sandbox.exec(["cat", f"/proc/{os.getpid()}/cmdline"]).result()
    assert len(pids) < 10, pids
    assert host_file.returncode != 0 or str(os.getpid()) in pids


def test_memory_limit_from_the_request_is_enforced(defaults: SandboxDefaults) -> None:
    hog = "x = bytearray(400 * 1024 * 1024); print('allocated')"
    resources = ResourceOptions(limits={"cpu": "1", "memory": "128Mi"})
    with Sandbox.run(defaults=defaults, resources=resources) as sandbox:
        result = sandbox.exec(["python3", "-c", hog]).result()
    assert result.returncode == 137, (result.returncode, result.stdout, result.stderr)
    assert "allocated" not in result.stdout


def test_no_capabilities_inside(defaults: SandboxDefaults) -> None:
    with Sandbox.run(defaults=defaults) as sandbox:
        caps = sandbox.exec(["sh", "-c", "grep CapEff /proc/self/status"]).result().stdout
        mount = sandbox.exec(["sh", "-c", "mount -t tmpfs none /mnt"]).result()
    assert caps.split()[-1] == "0000000000000000"
    assert mount.returncode != 0


def test_stop_leaves_no_process(defaults: SandboxDefaults) -> None:
    # A duration no other test uses, so the host-wide scan below only finds our process.
    duration = f"1000.{os.getpid()}{time.monotonic_ns() % 100000}"
    sandbox = Sandbox.run("sleep", duration, defaults=defaults)
    sandbox.wait()
    sandbox.stop(graceful_shutdown_seconds=1).result()
    assert sandbox.returncode in (137, 143)
    leftovers = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid) == f"sleep {duration}"
    ]
    assert leftovers == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
