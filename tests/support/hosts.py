"""Runners on other "hosts": network namespaces behind a router the test controls.

Fault tests need runners that are not on the control plane's loopback, so that the link
between them can fail the way a network fails: packets lost, nobody told. A
:class:`HostNetwork` builds this, for one test, out of network namespaces it creates and
removes (nothing else on the machine sends or receives a packet of it)::

    root namespace                     router namespace  sbxt<N>-net    host namespaces
    control plane  10.231.N.1/30 ─veth─ uplink 10.231.N.2/30
                                        h1 10.231.N.5/30 ───────veth─── eth0 10.231.N.6   sbxt<N>-h1
                                        h2 10.231.N.9/30 ───────veth─── eth0 10.231.N.10  sbxt<N>-h2

``N`` is claimed machine-wide (a file under :data:`CLAIM_DIR`), so parallel test workers,
or several worktrees testing on one machine, never share names or addresses. The control
plane listens on ``10.231.N.1`` (:meth:`HostNetwork.control_plane`); a runner runs in a host
namespace (:meth:`Host.runner`: ``nsenter --net``, which changes only the network namespace:
``ip netns exec`` would also remount ``/sys`` and with it the cgroup hierarchy the local
backend needs) and dials the control plane through the router. Nothing has a default route,
so no packet can leave towards the real network; sandboxes in a host therefore get egress
``none`` (the embedded ``locked-down`` profile), which needs no route at all.

**Cutting a link** (:meth:`Host.cut`, :meth:`Host.restore`). Two ways; measured with a
control plane (``--health-timeout 2``) and a runner in this topology:

* ``"drop"`` (the default: a partition). The router drops every packet forwarded to or
  from the host (``iptables -I FORWARD -i/-o hN -j DROP`` in the router namespace). Both
  ends keep link, address and ARP; their sends succeed and the packets vanish, as when a
  switch, router or firewall between two machines fails. TCP on both sides retransmits
  with exponential backoff. The control plane notices first: by its heartbeat timeout
  (unhealthy ~1.8 s after the cut), and its HTTP/2 keepalive (5 s ping, 5 s timeout)
  closes the runner's stream ~10 s in. The runner sends no keepalive pings of its own, so
  it notices only when a backed-off retransmission reaches the control plane after the
  restore: a cut shorter than the keepalive resumes the *same* connection (3 s cut:
  healthy 0.5 s after the restore); a longer one is answered with a reset and the runner
  redials, late (8 s cut: healthy 6 s after the restore; 15 s: 12 s; 40 s: 15 s).
* ``"link"`` (a pulled cable). The router's end of the host's veth goes down, so the
  host's ``eth0`` loses its carrier. The runner's sends now fail inside its own kernel,
  which TCP treats as local congestion and keeps retrying about every half second, so the
  runner resumes (or, after the keepalive closed its stream, gets its reset and redials)
  within about a second of the restore, however long the cut. The router, having lost its
  route to the host, answers the control plane's packets with ICMP "network unreachable":
  a new connection to the host fails at once (ENETUNREACH), the established stream takes
  it as a soft error and retransmits as with ``"drop"``.

``"drop"`` is the one that models a real partition, including the runner's slow discovery
of it: nothing is refused while it lasts. A refusal (RST, an ICMP error, or an ``OUTPUT``
DROP, which the kernel reports to the sender as EPERM) tells the sender at once that the
peer is gone, which a partition does not.

**Runners** (:meth:`Host.runner`) are ordinary :class:`RunnerProcess` objects wrapped in
``nsenter``; ``kill()`` is a SIGKILL of the runner itself and ``start()`` again restarts it
on the same state directory. Several runners on one machine do not collide: the local
backend keys its cgroup group (``sandboxd-<sha1(data dir)>``), its zygote socket and its
state by the data directory (the state directory here), and claims user-id ranges and
sandbox subnets machine-wide. Whatever a killed runner left behind (sandboxes, their
keepers, the zygote, cgroups, id claims) is removed by :func:`reap_runner_state`, which
:meth:`HostNetwork.close` runs for every runner it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from sandboxd.backends.local.protocol import ZYGOTE_SOCKET
from tests.support.processes import ControlPlaneProcess, RunnerProcess

CLAIM_DIR = Path("/run/sandboxd-tests/hostnet")
PREFIX = "sbxt"  # every name this module makes starts with it
MAX_HOSTS = 63  # /30s 1..63 of the /24; /30 0 is the root namespace's link
Cut = Literal["drop", "link"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def require_net_tools() -> None:
    """Skip (outside CI) where namespaces cannot be made: not root, or no iproute2/iptables."""
    missing = [tool for tool in ("ip", "iptables", "nsenter") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'ip, iptables, nsenter'}")


def _netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def enter(netns: str) -> list[str]:
    """The argv prefix that runs a command in network namespace ``netns`` (and nothing else)."""
    return ["nsenter", f"--net={_netns_path(netns)}", "--"]


@dataclass
class Host:
    """One "machine": a network namespace with one address, behind the network's router."""

    network: HostNetwork
    index: int
    runners: list[RunnerProcess] = field(default_factory=list)
    cut_by: Cut | None = None

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{self.network.prefix}-{self.name}"

    @property
    def address(self) -> str:
        """This host's address (its ``eth0``); what the control plane sees as the peer."""
        return self.network.address(4 * self.index + 2)

    @property
    def router_address(self) -> str:
        return self.network.address(4 * self.index + 1)

    @property
    def router_if(self) -> str:
        """The router's end of this host's link (in the router namespace)."""
        return self.name

    def command(self, *argv: str) -> list[str]:
        """``argv`` run in this host's network namespace."""
        return [*enter(self.netns), *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.command(*argv), check=check)

    def _setup(self) -> None:
        router = self.network.router
        _ip("netns", "add", self.netns)
        _ip("-n", router, "link", "add", self.router_if, "type", "veth",
            "peer", "name", "eth0", "netns", self.netns)  # fmt: skip
        _ip("-n", router, "addr", "add", f"{self.router_address}/30", "dev", self.router_if)
        _ip("-n", router, "link", "set", "dev", self.router_if, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "dev", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "dev", "lo", "up")
        # Only the test network is reachable: no default route, nothing leaves the machine.
        _ip("-n", self.netns, "route", "add", self.network.subnet, "via", self.router_address)

    # -- faults ----------------------------------------------------------------------------
    def _forward_rules(self, op: str) -> None:
        for direction in ("-i", "-o"):
            _run([*enter(self.network.router), "iptables", "-w", op, "FORWARD",
                  direction, self.router_if, "-j", "DROP"])  # fmt: skip

    def cut(self, how: Cut = "drop") -> None:
        """Partition this host from everything else; see the module docstring for ``how``."""
        if self.cut_by is not None:
            raise RuntimeError(f"{self.name} is already cut ({self.cut_by})")
        if how == "drop":
            self._forward_rules("-I")
        else:
            _ip("-n", self.network.router, "link", "set", "dev", self.router_if, "down")
        self.cut_by = how

    def restore(self) -> None:
        """Undo :meth:`cut` (a no-op when the link is whole)."""
        if self.cut_by == "drop":
            self._forward_rules("-D")
        elif self.cut_by == "link":
            _ip("-n", self.network.router, "link", "set", "dev", self.router_if, "up")
        self.cut_by = None

    # -- runners ---------------------------------------------------------------------------
    def runner(
        self, control_plane: ControlPlaneProcess, state_dir: Path, **fields: Any
    ) -> RunnerProcess:
        """A runner (not started) that lives in this host and dials ``control_plane``.

        ``fields`` are :class:`RunnerProcess` fields (``runner_id``, ``group``, ``tags``,
        ``extra_env``, ...). :meth:`HostNetwork.close` stops it and reaps its sandboxes.
        """
        runner = RunnerProcess(control_plane, state_dir, wrapper=enter(self.netns), **fields)
        self.runners.append(runner)
        return runner


@dataclass
class HostNetwork:
    """A router namespace, the root namespace's link to it, and the hosts behind it."""

    number: int
    hosts: list[Host] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.number}"

    @property
    def router(self) -> str:
        """The router's network namespace."""
        return f"{self.prefix}-net"

    @property
    def root_if(self) -> str:
        """The root namespace's end of its link to the router."""
        return self.prefix

    @property
    def subnet(self) -> str:
        return f"10.231.{self.number}.0/24"

    def address(self, last: int) -> str:
        return f"10.231.{self.number}.{last}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on this network: where a control plane listens."""
        return self.address(1)

    def control_plane(self, data_dir: Path, **fields: Any) -> ControlPlaneProcess:
        """A control plane (not started) in the root namespace, reachable from every host.

        ``fields`` are :class:`ControlPlaneProcess` fields (``health_timeout``, ``config``,
        ``extra_args``, ...); it listens on :attr:`gateway`, where clients in this process
        reach it too.
        """
        return ControlPlaneProcess(data_dir, listen_host=self.gateway, **fields)

    def _setup(self) -> None:
        _ip("netns", "add", self.router)
        _ip("link", "add", self.root_if, "type", "veth",
            "peer", "name", "uplink", "netns", self.router)  # fmt: skip
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.root_if)
        _ip("link", "set", "dev", self.root_if, "up")
        _ip("-n", self.router, "addr", "add", f"{self.address(2)}/30", "dev", "uplink")
        _ip("-n", self.router, "link", "set", "dev", "uplink", "up")
        _ip("-n", self.router, "link", "set", "dev", "lo", "up")
        _run([*enter(self.router), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _ip("route", "add", self.subnet, "via", self.address(2), "dev", self.root_if)

    def add_host(self) -> Host:
        """One more host, connected and reachable."""
        if len(self.hosts) >= MAX_HOSTS:
            raise RuntimeError(f"at most {MAX_HOSTS} hosts per network")
        host = Host(self, len(self.hosts) + 1)
        self.hosts.append(host)
        host._setup()
        return host

    def close(self) -> None:
        """Stop every runner, reap what they left, remove namespaces and links (best effort)."""
        errors: list[str] = []
        runners = [runner for host in self.hosts for runner in host.runners]
        for host in self.hosts:
            with contextlib.suppress(RuntimeError):
                host.restore()  # a runner that can reach its control plane stops sooner
        for runner in runners:  # all at once: a runner takes a moment to stop
            if runner.proc is not None:
                runner.proc.signal(signal.SIGTERM)
        for runner in runners:
            try:
                if runner.proc is not None:
                    runner.proc.stop()
                reap_runner_state(runner.state_dir)
            except Exception as exc:  # keep cleaning; report at the end
                errors.append(f"reaping {runner.state_dir}: {exc!r}")
        _remove(self.number)
        if errors:
            raise RuntimeError("; ".join(errors))


def _remove(number: int) -> None:
    """Delete every namespace and link of network ``number`` (also stale ones of a crash)."""
    prefix = f"{PREFIX}{number}-"
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for name in (line.split()[0] for line in listed if line.strip()):
        if name.startswith(prefix):
            _ip("netns", "del", name, check=False)  # its veths go with it
    _ip("link", "del", f"{PREFIX}{number}", check=False)


def _claim() -> int:
    """A network number no live process on this machine holds; the claim file is ours."""
    CLAIM_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for number in range(1, 255):
        path = CLAIM_DIR / str(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if _holder_alive(path):
                continue
            _remove(number)  # a crashed test's leftovers
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # someone else reclaimed it first
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return number
    raise RuntimeError(f"no free test network number in {CLAIM_DIR}")


def _holder_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return True  # being written right now
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def host_network(hosts: int = 0) -> Iterator[HostNetwork]:
    """A test network with ``hosts`` hosts (add more with :meth:`HostNetwork.add_host`).

    Everything is removed on exit, also when the body fails: runners are stopped, their
    sandboxes reaped, namespaces and links deleted, the claim released.
    """
    require_net_tools()
    number = _claim()
    network = HostNetwork(number)
    try:
        _remove(number)
        network._setup()
        for _ in range(hosts):
            network.add_host()
        yield network
    finally:
        try:
            network.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                (CLAIM_DIR / str(number)).unlink()


@pytest.fixture
def test_network() -> Iterator[HostNetwork]:
    """A :class:`HostNetwork` with no hosts yet, removed after the test."""
    with host_network() as network:
        yield network


def reap_runner_state(state_dir: Path) -> list[str]:
    """Destroy every sandbox a (stopped or killed) runner left in ``state_dir``.

    Runs the local backend's own recovery on the runner's data directory, then destroys what
    it found alive and shuts its zygote down, which frees their processes, cgroups, id ranges
    and subnets. Last, it gives back user-id ranges still claimed as prepared ahead for this
    backend: a runner restarted after a SIGKILL leaves its predecessor's behind when it stops
    before creating a sandbox (``tests/fault/test_runner_crash.py`` has the test of that).
    Returns the ids destroyed (none when the test cleaned up after itself). Call it only
    once the runner process has exited.
    """
    backend_dir = state_dir / "backend"
    sandboxes = backend_dir / "sandboxes"
    left = any(sandboxes.iterdir()) if sandboxes.is_dir() else False
    try:
        if not left and not _zygote_listening(backend_dir / "run"):
            return []  # nothing to do (a clean stop); do not start a zygote just to stop it
        from sandboxd.backends.local import LocalBackend
        from sandboxd.images import ImageStore

        async def reap() -> list[str]:
            backend = LocalBackend(backend_dir, images=ImageStore(state_dir))  # only destroys
            try:
                alive = await backend.recover()
                for sandbox_id in alive:
                    await backend.destroy(sandbox_id)
                return alive
            finally:
                await backend.close()

        return asyncio.run(reap())
    finally:
        release_prepared_claims(backend_dir)


def prepared_claims(backend_dir: Path) -> list[Path]:
    """Claim files of user-id ranges prepared ahead by the local backend in ``backend_dir``."""
    from sandboxd.backends.local.prepared_ids import PREPARED
    from sandboxd.backends.local.userns import IDMAP_DIR

    key = hashlib.sha1(str(backend_dir.absolute()).encode()).hexdigest()[:8]
    mine = f"sandboxd-{key} {PREPARED}"
    found = []
    for path in Path(IDMAP_DIR).glob("*") if Path(IDMAP_DIR).is_dir() else []:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == mine:
                found.append(path)
    return found


def release_prepared_claims(backend_dir: Path) -> None:
    """Remove :func:`prepared_claims` (only once nothing of that backend runs any more)."""
    for path in prepared_claims(backend_dir):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _zygote_listening(run_dir: Path) -> bool:
    """Whether a zygote answers in ``run_dir`` (a dead one leaves its socket file)."""
    try:
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            # Through the directory's fd: the full path may exceed sun_path's 108 bytes.
            sock.connect(f"/proc/self/fd/{dir_fd}/{ZYGOTE_SOCKET}")
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)
