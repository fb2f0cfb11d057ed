"""A "test host" for egress tests: a network namespace next to the host, made by the test.

Traffic only ever goes to 127.0.0.1 or to this namespace (``ip netns add``), joined to the
host by a veth pair, with a few addresses and a small bounded TCP server. No packet is sent
anywhere else. Everything is removed when the module's tests are done, also on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SERVER = r"""
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080)); srv.listen(16); srv.settimeout(0.5)
print("ready", flush=True)
deadline, served = time.monotonic() + 300, 0
while time.monotonic() < deadline and served < 200:
    try:
        conn, peer = srv.accept()
    except TimeoutError:
        continue
    conn.sendall(f"hello {conn.getsockname()[0]} from-peer {peer[0]}\n".encode())
    conn.close(); served += 1
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


def _need_net_tools() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        pytest.skip("needs root, iproute2 and iptables")


@pytest.fixture(scope="module")
def test_host() -> Iterator[NetHost]:
    _need_net_tools()
    n = os.getpid() % 250 + 1
    name, veth = f"sbxtest-{os.getpid()}", f"sbxtv{os.getpid()}"[:15]
    host = NetHost(
        name, veth, f"198.18.{n}.1", f"198.18.{n}.2", f"198.18.{n}.3",
        f"10.214.{n}.2", f"10.214.{n}.3", f"192.168.{n}.2", f"100.64.{n}.2",
    )  # fmt: skip
    subnets = [f"198.18.{n}", f"10.214.{n}", f"192.168.{n}", f"100.64.{n}"]
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
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield host
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
