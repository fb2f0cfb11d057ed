"""A one-runner cluster for fault tests, and what the tests look at on the host.

:func:`start_cluster` puts a real ``sandboxd controlplane`` (on the database a test is
parametrised with, health timeout 2 s, heartbeats every 0.5 s) in the root network
namespace and one real ``sandboxd runner`` in a host namespace behind the test router
(``tests/support/hosts.py``), so that its link can be cut and either side SIGKILLed.

The rest answers questions a fault test asks of the machine rather than of the API, because
the API is what is under test: which processes a sandbox still has (its cgroup), which of
them is its keeper, and what a runner holds on the host (:class:`HostInventory`, for leak
checks: processes, cgroups, mounts, network namespaces, links, firewall rules, files).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from sandboxd.backends.local.hook_chains import forward_chain, input_chain, nat_chain
from sandboxd.images import ImageStore, build_python_image
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.support.gateway import Gateway
from tests.support.hosts import Host, HostNetwork
from tests.support.processes import (
    SANDBOXD,
    ControlPlaneProcess,
    DiscoveryClient,
    Proc,
    RunnerProcess,
    child_env,
)

HEALTH_TIMEOUT = 2.0
"""The control plane's ``--health-timeout`` in these tests: faults show within seconds."""
HEARTBEAT_INTERVAL = 0.5
RECOVERY = 10.0
"""A restarted or reconnected runner is healthy, and its sandboxes usable, within this."""
UNHEALTHY_BOUND = HEALTH_TIMEOUT + 1.5
"""A runner that went silent is reported unhealthy within this (timeout plus a heartbeat
and discovery's own granularity)."""
T = TypeVar("T")


def prepare_image(state_dir: Path) -> None:
    """``python:3.11`` in a runner's image store (a link into the machine-wide build cache)."""
    build_python_image(ImageStore(state_dir), progress=lambda _line: None)


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail saying ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what} (last: {last!r})")
        time.sleep(interval)


def recent_output(name: str, proc: Proc | None, lines: int = 60) -> str:
    """The last ``lines`` lines ``proc`` printed, headed by ``name``, for a failure message."""
    if proc is None:
        return f"--- {name}: not started"
    tail = list(proc.lines)[-lines:]
    return "\n".join([f"--- {name} (exit status {proc.popen.poll()}), last lines:", *tail])


# -- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """One control plane and one runner (``east``) on one host of a test network."""

    network: HostNetwork
    host: Host
    control_plane: ControlPlaneProcess
    runner: RunnerProcess
    root: Path
    # Every control plane the test started here (stopped at the end).
    control_planes: list[ControlPlaneProcess] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)

    @property
    def runner_id(self) -> str:
        assert self.runner.runner_id is not None
        return self.runner.runner_id

    def gateway(self, api_key: str | None = None) -> Gateway:
        """Raw sandbox calls on a new channel to the current control plane (closed at the end).

        A new channel after a control plane restart, so no call waits out a reconnect backoff
        the old channel accumulated while the server was away.
        """
        gateway = Gateway(self.control_plane, api_key)
        self.gateways.append(gateway)
        return gateway

    @contextlib.contextmanager
    def discovery(self, api_key: str | None = None) -> Iterator[DiscoveryClient]:
        with self.control_plane.discovery(api_key) as client:
            yield client

    def runner_health(self, api_key: str | None = None) -> bool | None:
        """Whether discovery reports the runner healthy (None: not listed, or no answer)."""
        try:
            with self.discovery(api_key) as client:
                for runner in client.all_runners():
                    if runner.runner_id == self.runner_id:
                        return bool(runner.healthy)
        except grpc.RpcError:
            return None
        return None

    def wait_health(self, healthy: bool, timeout: float) -> float:
        """Seconds until discovery reports the runner with this health (fails after timeout).

        A failure carries the last lines both processes printed: a runner that was slow to
        come back (seen once in CI, under load) says there what it was doing.
        """
        start = time.monotonic()
        try:
            wait_until(
                f"runner {self.runner_id} healthy={healthy}",
                lambda: self.runner_health() is healthy,
                timeout,
                interval=0.05,
            )
        except AssertionError as failure:
            raise AssertionError(
                f"{failure}\n{recent_output('runner', self.runner.proc)}"
                f"\n{recent_output('control plane', self.control_plane.proc)}"
            ) from None
        return time.monotonic() - start

    def connected_at(self) -> float:
        """When the runner's current connection registered (seconds since the epoch)."""
        with self.discovery() as client:
            runner = client.get_runner(self.runner_id)
        return float(runner.connected_at.ToMicroseconds()) / 1e6

    def registrations(self) -> int:
        """How many times the runner process registered (it logs one line per registration)."""
        assert self.runner.proc is not None
        marker = f"runner {self.runner_id} registered with"
        return sum(marker in line for line in list(self.runner.proc.lines))

    def restart_control_plane(self) -> ControlPlaneProcess:
        """Start the (killed or stopped) control plane again: same data dir, database, port."""
        self.control_plane.start()
        return self.control_plane

    def new_control_plane(
        self, data_dir: Path, database_url: str, port: int | None = None
    ) -> ControlPlaneProcess:
        """Another control plane on the same network, not started (a new port by default)."""
        control_plane = self.network.control_plane(
            data_dir,
            health_timeout=HEALTH_TIMEOUT,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            database_url=database_url,
            extra_args=("--log-level", "INFO"),
            **({"port": port} if port is not None else {}),
        )
        self.control_planes.append(control_plane)
        return control_plane

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.close()
        for control_plane in self.control_planes:
            if control_plane.proc is not None:
                control_plane.proc.kill()


@contextlib.contextmanager
def start_cluster(
    network: HostNetwork,
    root: Path,
    database_url: str,
    runner_id: str = "east",
    control_plane_args: Sequence[str] = ("--log-level", "INFO"),
    runner_args: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A running :class:`Cluster` on ``database_url``; its runner is healthy.

    The test network (the caller's ``test_network`` fixture) stops the runner and reaps
    whatever sandboxes are left when the test ends, also when it fails.
    """
    control_plane = network.control_plane(
        root / "cp",
        health_timeout=HEALTH_TIMEOUT,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        database_url=database_url,
        extra_args=control_plane_args,
    )
    host = network.add_host()
    state_dir = root / runner_id
    prepare_image(state_dir)
    runner = host.runner(
        control_plane, state_dir, runner_id=runner_id, extra_args=list(runner_args)
    )
    cluster = Cluster(network, host, control_plane, runner, root, [control_plane])
    try:
        control_plane.start()
        runner.start()
        cluster.wait_health(True, 60)
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):
            host.restore()
        cluster.close()


# -- errors --------------------------------------------------------------------------------------


def error_reason(error: grpc.RpcError) -> str:
    """The ``CWSANDBOX_*`` reason of a call's rich status (empty when it has none)."""
    call = cast(grpc.Call, error)
    blob = dict(call.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not isinstance(blob, bytes):
        return ""
    for detail in status_pb2.Status.FromString(blob).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def rpc_error(call: Callable[[], Message]) -> grpc.RpcError:
    """The error ``call`` fails with (it must fail)."""
    try:
        answer = call()
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected the call to fail; it answered {answer}")


# -- sandboxes on the host -----------------------------------------------------------------------


def _cgroup_text(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def parent_of(pid: int) -> int:
    """``pid``'s parent (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def sandbox_pids(sandbox_id: str) -> list[int]:
    """Host PIDs of every process in the sandbox's cgroup (its path carries the sandbox id)."""
    needle = f"/{sandbox_id}\n"
    return [pid for pid in _pids() if needle in _cgroup_text(pid)]


def sandboxes_on_host(sandbox_ids: Collection[str]) -> set[str]:
    """Which of ``sandbox_ids`` have a process on the host, from one pass over ``/proc``.

    Why one pass: :func:`sandbox_pids` reads every process's cgroup file, and asking it for
    each of a dozen sandboxes in turn took long enough on a busy CI host for the runner to
    build most of them before a test that polls for the first one saw it.
    """
    needles = {f"/{sandbox_id}\n": sandbox_id for sandbox_id in sandbox_ids}
    found: set[str] = set()
    for pid in _pids():
        text = _cgroup_text(pid)
        found.update(sid for needle, sid in needles.items() if needle in text)
    return found


def wait_idle(sandbox_id: str, timeout: float = 10) -> None:
    """Wait until an ``IDLE`` sandbox's shell runs its ``sleep``.

    Start returns once the main process is spawned, before the shell has read its script;
    a SIGTERM (or a freeze) that lands before ``trap`` ends the shell with 143 instead of 0.
    The shell traps first and starts ``sleep`` after, so a ``sleep`` means the trap is set.
    """
    wait_until(
        f"{sandbox_id}'s shell to start its sleep",
        lambda: any(process_name(pid) == "sleep" for pid in sandbox_pids(sandbox_id)),
        timeout,
        interval=0.02,
    )


def sandbox_init(sandbox_id: str) -> int:
    """The host PID of the sandbox's PID 1 (its agent): the one whose parent is outside it."""
    pids = set(sandbox_pids(sandbox_id))
    found = [pid for pid in pids if parent_of(pid) not in pids]
    assert len(found) == 1, f"{sandbox_id}: processes {sorted(pids)}, roots {found}"
    return found[0]


def keeper_of(sandbox_id: str) -> int:
    """The host PID of the sandbox's keeper (``sandboxd-keeper``, parent of its PID 1).

    Waits (bounded) for the name: a keeper answers the runner, then execs the native
    program from its sealed memfd, whose name (``memfd:sandboxd-…``) it carries until the
    program names itself, a moment later. A started sandbox can be looked at in between.
    """
    keeper = parent_of(sandbox_init(sandbox_id))
    wait_until(
        f"{keeper} is named sandboxd-keeper ({process_name(keeper)})",
        lambda: process_name(keeper) == "sandboxd-keeper",
        10,
        0.01,
    )
    return keeper


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the admin command ---------------------------------------------------------------------------


def sandboxd_admin(
    control_plane: ControlPlaneProcess, *argv: str
) -> subprocess.CompletedProcess[str]:
    """``sandboxd ARGV...`` as an administrator of ``control_plane`` (its URL and admin key)."""
    env = child_env(CWSANDBOX_BASE_URL=control_plane.url, CWSANDBOX_API_KEY=control_plane.admin_key)
    return subprocess.run(
        [*SANDBOXD, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# -- what a runner holds on the host -------------------------------------------------------------


CGROUP_ROOT = Path("/sys/fs/cgroup")
PREPARED, PREPARED_DEPTH = "<prepared>", 4  # backends/local/prepared_ids.py
PREPARED_NET = " prepared:"  # a network made ahead (backends/local/network_pool.py)


def backend_key(state_dir: Path) -> str:
    """The local backend's key for a runner with ``state_dir`` (names its cgroups and nets)."""
    return hashlib.sha1(str((state_dir / "backend").absolute()).encode()).hexdigest()[:8]


def network_tag(state_dir: Path, sandbox_id: str) -> str:
    """The tag of a sandbox's named netns, veth and firewall chain (``network.py``)."""
    return hashlib.sha1(f"{backend_key(state_dir)}/{sandbox_id}".encode()).hexdigest()[:10]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        children.setdefault(parent_of(pid), []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _mount_lines(pid: int, needles: tuple[str, ...]) -> list[str]:
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Fields 5 (mount point) and 4 (root); the ids in front change from one mount to the next.
    return sorted(
        " ".join(line.split()[3:5]) for line in lines if any(needle in line for needle in needles)
    )


@dataclass(frozen=True)
class HostInventory:
    """What a runner (its processes and its sandboxes) holds on this machine, right now."""

    processes: tuple[str, ...]
    cgroups: tuple[str, ...]
    mounts: tuple[str, ...]
    netns: tuple[str, ...]
    links: tuple[str, ...]
    rules: tuple[str, ...]
    files: tuple[str, ...]
    claims: tuple[str, ...]

    def differences(self, other: HostInventory) -> dict[str, tuple[list[str], list[str]]]:
        """Per kind: (what ``other`` has and this has not, what this has and ``other`` not)."""
        out = {}
        for kind in self.__dataclass_fields__:
            mine, theirs = Counter(getattr(self, kind)), Counter(getattr(other, kind))
            if mine != theirs:
                out[kind] = (sorted((theirs - mine).elements()), sorted((mine - theirs).elements()))
        return out


def _cgroup_dirs(group: str) -> list[str]:
    found: list[str] = []
    for hierarchy in [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]:
        top = hierarchy / group
        if top.is_dir():
            found.extend(str(p.relative_to(CGROUP_ROOT)) for p in top.rglob("*") if p.is_dir())
    return sorted(set(found))


def _files(root: Path, skip: tuple[str, ...]) -> list[str]:
    out = []
    for path in root.rglob("*"):
        relative = str(path.relative_to(root))
        if any(relative.startswith(prefix) for prefix in skip):
            continue
        out.append(relative + ("/" if path.is_dir() else ""))
    return sorted(out)


def _claims(key: str, group: str) -> list[str]:
    """Machine-wide claim files (subnets, user-id ranges) that name this backend.

    A claim made for a sandbox is listed by what it says (owner and sandbox); ranges the
    zygote prepares ahead (``<prepared>``) only when there are more than the pool's depth (a
    leak), since how many are ready at a given moment, none included, depends on its
    background refill (on a loaded host the pool can be empty for seconds).
    """
    out: list[str] = []
    prepared: dict[str, int] = {}
    run = Path("/run/sandboxd")
    if run.is_dir():
        for path in run.rglob("*"):
            if path.is_file():
                with contextlib.suppress(OSError):
                    text = path.read_text(errors="replace").strip()
                    if key not in text and group not in text:
                        continue
                    if text.endswith(PREPARED) or PREPARED_NET in text:
                        where = str(path.parent)
                        prepared[where] = prepared.get(where, 0) + 1
                    else:
                        out.append(f"{path.parent}: {text}")
    for where, count in prepared.items():
        if count > PREPARED_DEPTH:
            out.append(f"{where}: {count} prepared")
    return sorted(out)


def _prepared_networks(key: str) -> dict[str, str]:
    """The networks the backend keyed ``key`` holds ready (no sandbox's yet): tag -> the
    sandbox address (from the claim's pool directory, ``10.213.0.0_16``, and /30 index)."""
    found: dict[str, str] = {}
    ipam = Path("/run/sandboxd/ipam")
    if ipam.is_dir():
        for path in ipam.rglob("*"):
            with contextlib.suppress(OSError, ValueError):
                text = path.read_text(errors="replace").strip() if path.is_file() else ""
                if text.startswith(key + PREPARED_NET):
                    pool = ipaddress.IPv4Network(path.parent.name.replace("_", "/"))
                    address = pool.network_address + int(path.name) * 4 + 2
                    found[text.split(PREPARED_NET, 1)[1]] = str(address)
    return found


def host_inventory(
    host: Host, runner: RunnerProcess, sandbox_ids: Iterable[str] = ()
) -> HostInventory:
    """:class:`HostInventory` of ``runner`` (running in ``host``); see the module docstring.

    Processes are named by what they are, not their PIDs (a restarted helper is no leak):
    every descendant of the runner and every process in the backend's cgroup group. Named
    network namespaces are looked for by the tags of ``sandbox_ids`` (other runners on this
    machine have theirs; links and rules are the host namespace's, which is this test's).
    Networks the backend made ahead of need are left out (how many are ready at a given
    moment depends on its background refill), and with them the shared egress chain their
    rules keep alive; networks of sandboxes are all counted. Files
    are the runner's state directory without the image store and the logs of the runner
    itself (both only grow with work, not with leaks).
    """
    assert runner.proc is not None
    state_dir = runner.state_dir
    key = backend_key(state_dir)
    group = f"sandboxd-{key}"
    pids = _descendants(runner.proc.popen.pid) | {
        pid
        for pid in _pids()
        if f"/{group}/" in _cgroup_text(pid) or f"/{group}\n" in _cgroup_text(pid)
    }
    processes = sorted(f"{process_name(pid)}" for pid in pids)
    tags = {network_tag(state_dir, sandbox_id) for sandbox_id in sandbox_ids}
    netns_names = tuple(f"sandboxd-{tag}" for tag in tags)
    mounts = _mount_lines(os.getpid(), (str(state_dir), *netns_names)) + [
        line
        for pid in pids
        for line in _mount_lines(pid, (str(state_dir),))
        if process_name(pid) != "sandboxd-keeper"
    ]
    netns = sorted(name for name in _listdir("/run/netns") if name in netns_names)
    links = host.run("ip", "-o", "link", "show").stdout.splitlines()
    ready = _prepared_networks(key)
    # With them their hook chains (hook_chains.py), which live as long as a network is in
    # them: which ones depends on the refill too.
    ready_marks = tuple(
        mark
        for tag, address in ready.items()
        for mark in (
            f"sandboxd:{tag}",
            f"SBX-{tag}",
            f"sbx{tag}",
            input_chain(tag),
            forward_chain(tag),
            nat_chain(address),
        )
    ) + (("SANDBOXD-NONPUBLIC",) if ready else ())
    ready_links = {f"sbx{tag}" for tag in ready}
    names = (line.split(":")[1].strip().split("@")[0] for line in links)
    link_names = sorted(name for name in names if name not in ready_links)
    rules = [
        line
        for line in host.run("iptables-save").stdout.splitlines()
        if line.startswith(("-A", ":"))
        and not line.startswith("# ")
        and not any(mark in line for mark in ready_marks)
    ]
    nat = [
        line
        for line in host.run("iptables-save", "-t", "nat").stdout.splitlines()
        if line.startswith(("-A", ":")) and not any(mark in line for mark in ready_marks)
    ]
    return HostInventory(
        processes=tuple(processes),
        cgroups=tuple(_cgroup_dirs(group)),
        mounts=tuple(sorted(set(mounts))),
        netns=tuple(netns),
        links=tuple(link_names),
        rules=tuple(sorted(_strip_counters(line) for line in rules + nat)),
        files=tuple(_files(state_dir, ("images", "backend/images"))),
        claims=tuple(_claims(key, group)),
    )


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _strip_counters(line: str) -> str:
    # ":CHAIN POLICY [packets:bytes]" -> ":CHAIN POLICY"
    return line.split(" [", 1)[0] if line.startswith(":") else line


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- an exec that is still running -----------------------------------------------------------


class RunningExec:
    """A ``StreamExec`` left running in a thread, to see how it ends when something breaks.

    ``ended`` is set when the call ended: with ``error`` (a gRPC status), an in-band ``error``
    frame (``frame_error``), an ``exit`` frame, or an end of stream without either.
    """

    def __init__(self, gateway: Gateway, sandbox_id: str, argv: list[str], marker: bytes) -> None:
        self.output = b""
        self.exit_code: int | None = None
        self.frame_error = ""
        self.error: grpc.RpcError | None = None
        self.started = threading.Event()
        self.ended = threading.Event()
        self.ended_at = 0.0
        self._stop_input = threading.Event()
        self._marker = marker
        init = streaming_pb2.ExecStreamInit(sandbox_id=sandbox_id, command=argv)
        self._frames = gateway.streaming.StreamExec(self._requests(init))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(
        self, init: streaming_pb2.ExecStreamInit
    ) -> Iterator[streaming_pb2.ExecStreamRequest]:
        yield streaming_pb2.ExecStreamRequest(init=init)
        self._stop_input.wait()  # keep stdin open: the exec stays interactive

    def _read(self) -> None:
        try:
            for frame in self._frames:
                kind = frame.WhichOneof("response")
                if kind == "output":
                    self.output += frame.output.data
                    if self._marker in self.output:
                        self.started.set()
                elif kind == "exit":
                    self.exit_code = frame.exit.exit_code
                    break
                elif kind == "error":
                    self.frame_error = f"{frame.error.code}: {frame.error.message}"
                    break
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()
            self._stop_input.set()

    def outcome(self) -> str:
        if self.error is not None:
            return f"{self.error.code().name}: {self.error.details()}"
        if self.frame_error:
            return f"error frame {self.frame_error}"
        if self.exit_code is not None:
            return f"exit {self.exit_code}"
        return "stream ended without exit or error"

    def close(self) -> None:
        self._stop_input.set()
        self._frames.cancel()
        self._thread.join(10)
