"""A "test host" for egress tests: a network namespace next to the host, made by the test.

Traffic only ever goes to 127.0.0.1 or to this namespace (``ip netns add``), joined to the
host by a veth pair, with a few addresses and a small TCP server. No packet is sent
anywhere else. Everything is removed when the module's tests are done, also on failure.

The server lives exactly as long as the module's fixture: it exits when the test process
closes its stdin, at teardown or because the process died (a SIGKILLed test worker leaves
no server behind). It has no deadline or connection budget of its own, so a slow module
never finds the "internet" gone half-way. The subnet number is claimed machine-wide with a
lock that dies with its process, so parallel workers (or worktrees) never share addresses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER = r"""
import os, socket, sys, threading
def _orphaned():  # the test process closed our stdin: it is done, or it died
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=_orphaned, daemon=True).start()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080)); srv.listen(64)
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    conn.sendall(f"hello {conn.getsockname()[0]} from-peer {peer[0]}\n".encode())
    conn.close()
"""


@dataclass(frozen=True)
class NetHost:
    """A network namespace next to the host, reachable through a veth, serving TCP on 8080.

    ``ip_a``/``ip_b`` stand in for the internet (198.18.0.0/15, the benchmarking range, is
    not one egress blocks); ``private_a``/``private_b`` (10/8), ``lan`` (192.168/16) and
    ``cgnat`` (100.64/10) are neighbours that ``internet`` egress must not reach.
    """

    name: str
    host_if: str
    host_ip: str
    ip_a: str
    ip_b: str
    private_a: str
    private_b: str
    lan: str
    cgnat: str
    port: int = 8080

    @property
    def non_public(self) -> tuple[str, ...]:
        return (self.private_a, self.private_b, self.lan, self.cgnat)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


CLAIM_DIR = Path("/run/sandboxd-tests/nethost")
"""Where subnet numbers are claimed: a file per number, held by an exclusive ``flock``."""


@contextlib.contextmanager
def _claimed_number() -> Iterator[int]:
    """A subnet number (1..250) that no other live process on this machine holds.

    The lock goes with the process, however it ends, so there is nothing stale to clear.
    """
    CLAIM_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for number in range(1, 251):
        fd = os.open(CLAIM_DIR / str(number), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield number
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"no free test subnet number in {CLAIM_DIR}")


def _need_net_tools() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        pytest.skip("needs root, iproute2 and iptables")


@pytest.fixture(scope="module")
def test_host() -> Iterator[NetHost]:
    _need_net_tools()
    with _claimed_number() as n:
        yield from _serve(n)


def _serve(n: int) -> Iterator[NetHost]:
    name, veth = f"sbxnh-{n}", f"sbxnh{n}"
    host = NetHost(
        name, veth, f"198.18.{n}.1", f"198.18.{n}.2", f"198.18.{n}.3",
        f"10.214.{n}.2", f"10.214.{n}.3", f"192.168.{n}.2", f"100.64.{n}.2",
    )  # fmt: skip
    subnets = [f"198.18.{n}", f"10.214.{n}", f"192.168.{n}", f"100.64.{n}"]
    # A process that died holding this number may have left its namespace and link.
    subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    server = None
    try:
        _ip("netns", "add", name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        for subnet in subnets:
            _ip("addr", "add", f"{subnet}.1/24", "dev", veth)
        _ip("link", "set", veth, "up")
        for addr in (host.ip_a, host.ip_b, *host.non_public):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield host
    finally:
        if server is not None:
            server.kill()
            server.wait()
            for pipe in (server.stdin, server.stdout):
                if pipe is not None:
                    pipe.close()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
