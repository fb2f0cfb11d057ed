"""The narrow async interface every sandbox backend implements (rule 4 of DESIGN.md).

Shaped after Nomad task drivers and containerd shims: the runner owns policy (profiles,
limits, lifetimes, status reporting) and a backend only turns a fully resolved
``SandboxSpec`` into an isolated process tree and back. The lifecycle is
``create → start → (exec | files | logs | stats)* → stop → destroy``; ``wait`` may be called
at any time after ``start``; ``recover`` re-attaches to sandboxes that outlived a runner
restart. Every backend passes the same conformance checks (``sandboxd.backends.conformance``,
shipped in the package so that out-of-tree backends can run them too). The runner builds its
backend by name from the catalog (``sandboxd.backends``) with :meth:`Backend.from_config`.

A spec names its image by reference; images and preparing a root file system from one sit
behind the backend (the local backend resolves references in its image store; a VM backend
would have disk images), so the runner never handles a host path.

Warm pools are optional: a backend that can build a sandbox ahead of time, before it knows
the sandbox's id, sets ``supports_warm_pools`` and implements ``prepare`` (build one for a
template spec; an opaque slot name back), ``claim`` (that slot becomes sandbox
``spec.sandbox_id`` and its main process starts with ``spec``'s start-time settings: the
create and start of a cold sandbox in one step), ``discard`` (a slot nobody will claim) and
``discard_prepared`` (slots a previous runner process left behind). The defaults say "no
warm pools", so other backends need nothing.

Pausing is optional too: a backend that can freeze a sandbox's processes where they are
(no CPU; memory, files and descriptors kept) and thaw them sets ``supports_pause`` and
implements ``pause`` and ``resume``, reports ``SandboxState.paused``, and thaws a paused
sandbox before ``stop`` or ``destroy``. The defaults raise ``PauseUnsupported``.

Values are small frozen dataclasses so they can be logged, compared and passed across
threads safely. Errors are the typed tree in ``errors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import signal
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

from .errors import BackendError, BackendUnavailable, InvalidSpec, PauseUnsupported
from .keep_alive import KEEP_ALIVE

Stream = Literal["stdout", "stderr"]
SANDBOX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
IMAGE_REF_RE = re.compile(r"[!-~]{1,255}")  # what a backend accepts; each checks its own rules
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EgressType(enum.StrEnum):
    """Where a sandbox may send traffic (admin-model §2.4)."""

    NONE = "none"  # own network namespace with loopback only
    INTERNET = "internet"  # NAT through the host
    ALLOWLIST = "allowlist"  # like internet, but only to ``cidrs``


class IngressMode(enum.StrEnum):
    """Who may reach a sandbox's exposed ports."""

    PUBLIC = "public"  # published on every host interface
    INTERNAL = "internal"  # published on host loopback only


@dataclass(frozen=True)
class NetworkSpec:
    """Egress type (+ CIDRs for allowlist) and ingress mode (+ exposed container ports).

    ``blocked`` are destinations the runner forbids on top of what the backend never lets a
    sandbox reach (non-public ranges, the host): its control plane's addresses. An allowlist
    entry naming one of them exactly, or a subnet inside it, still wins (most specific first).
    """

    egress: EgressType = EgressType.NONE
    cidrs: tuple[str, ...] = ()
    ingress: IngressMode | None = None
    exposed_ports: tuple[int, ...] = ()
    blocked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import ipaddress

        for name, cidrs in (("network.cidrs", self.cidrs), ("network.blocked", self.blocked)):
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise InvalidSpec(name, f"not a CIDR: {cidr!r}") from None
        if self.cidrs and self.egress is not EgressType.ALLOWLIST:
            raise InvalidSpec("network.cidrs", "only used with egress type allowlist")
        if bool(self.exposed_ports) != (self.ingress is not None):
            raise InvalidSpec("network.exposed_ports", "ingress mode and ports go together")
        for port in self.exposed_ports:
            if not 0 < port < 65536:
                raise InvalidSpec("network.exposed_ports", f"bad port {port}")


@dataclass(frozen=True)
class MountedFile:
    """A file placed read-only at ``path`` before the main process starts."""

    path: str
    data: bytes


FORBIDDEN_MOUNT_ROOTS = ("/proc", "/sys", "/dev")


def check_mount_path(path: str, field_name: str) -> str:
    """``path`` as a mount point inside a sandbox, or ``InvalidSpec`` naming ``field_name``.

    Why so strict: the path is the client's, and the mount hides whatever the image has
    there; it must be absolute, normal (no ``..``, ``.`` or empty components), not ``/`` and
    not in the kernel's trees (``/proc``, ``/sys``, ``/dev``), whose masks it could undo.
    """
    if not path.startswith("/") or "\x00" in path or len(path) > 4096:
        raise InvalidSpec(field_name, f"must be an absolute path (got {path[:80]!r})")
    parts = path.split("/")[1:]
    if path.endswith("/") and len(parts) > 1:
        parts = parts[:-1]
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidSpec(field_name, f"must be a normal path, no '..', '.' or '//' ({path!r})")
    normal = "/" + "/".join(parts)
    if normal == "/" or any(
        normal == root or normal.startswith(root + "/") for root in FORBIDDEN_MOUNT_ROOTS
    ):
        raise InvalidSpec(field_name, f"cannot mount over {normal!r}")
    return normal


@dataclass(frozen=True)
class ScratchSpec:
    """A scratch file system: its own file system of ``size_bytes`` at ``mount_path``.

    Why a file system of its own and not a directory: the cap is hard (``ENOSPC`` at the
    size, as the writable layer has, ``disk.py``) and its content can be archived and
    restored on its own (snapshots). ``name`` is the volume's name (v1 scratch volumes; v1beta2
    has one, ``workspace``). ``restore_archive`` is a host file the *runner* staged (a tar
    archive from a snapshot, never a path a sandbox or a client chose); when set, the file
    system is filled from it before the main process starts.
    """

    mount_path: str
    size_bytes: int
    name: str = "workspace"
    restore_archive: Path | None = None

    def __post_init__(self) -> None:
        check_mount_path(self.mount_path, "scratch.mount_path")
        if self.size_bytes <= 0:
            raise InvalidSpec("scratch.size_bytes", "must be positive")


VOLUME_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
"""An organization or a volume's claim name: one path component that can never be ``..``."""
MAX_SUB_PATH_CHARS = 1024
MAX_VOLUMES = 8
"""Persistent volumes per sandbox: each is a descriptor on the way to the agent."""


def check_sub_path(sub_path: str, field_name: str) -> str:
    """``sub_path`` as a relative path inside a volume ("" for its root), else ``InvalidSpec``.

    Why so strict: it names a directory inside a volume the sandboxes themselves write, so it
    must stay inside by its very shape (no ``..``, no absolute path, nothing empty); symlinks
    on it are refused where it is resolved (``RESOLVE_NO_SYMLINKS``), since a sandbox made
    them.
    """
    if "\x00" in sub_path or len(sub_path) > MAX_SUB_PATH_CHARS:
        raise InvalidSpec(field_name, "must be a relative path of at most 1024 characters")
    if sub_path in ("", "."):
        return ""
    parts = sub_path.rstrip("/").split("/")
    if sub_path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InvalidSpec(
            field_name, f"must be a relative path inside the volume, no '..' ({sub_path[:80]!r})"
        )
    return "/".join(parts)


@dataclass(frozen=True)
class VolumeSource:
    """A persistent volume's directory: ``claim_name`` of ``organization``, at ``sub_path``.

    Where it lives is the backend's business (the local backend: a directory under its data
    directory); the names are checked here so that no backend ever joins a ``..`` or a ``/``.
    """

    organization: str
    claim_name: str
    sub_path: str = ""

    def __post_init__(self) -> None:
        for name in ("organization", "claim_name"):
            if not VOLUME_NAME_RE.fullmatch(getattr(self, name)):
                raise InvalidSpec(f"volume.{name}", "must be a lower-case name such as 'data'")
        object.__setattr__(self, "sub_path", check_sub_path(self.sub_path, "volume.sub_path"))


@dataclass(frozen=True)
class VolumeBinding:
    """A persistent volume bound at ``mount_path`` in the sandbox (read-only if asked).

    Files the sandbox writes there belong to its root as it sees them, and to the next
    sandbox's root the same way: the local backend binds the directory through an idmapped
    mount of the sandbox's user namespace, as it does the image.
    """

    source: VolumeSource
    mount_path: str
    read_only: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        check_mount_path(self.mount_path, "volumes.mount_path")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to run one sandbox; resolved and checked by the runner."""

    sandbox_id: str
    image: str  # a reference the backend resolves (``name:tag``, or ``name`` for latest)
    command: tuple[str, ...] = KEEP_ALIVE  # stay up until stopped (``keep_alive.py``)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    pids_max: int | None = None
    disk_bytes: int = 1 << 30
    network: NetworkSpec = field(default_factory=NetworkSpec)
    mounted_files: tuple[MountedFile, ...] = ()
    max_lifetime_seconds: float | None = None
    hostname: str | None = None
    scratch: ScratchSpec | None = None
    volumes: tuple[VolumeBinding, ...] = ()

    def __post_init__(self) -> None:
        if not SANDBOX_ID_RE.match(self.sandbox_id):
            raise InvalidSpec("sandbox_id", "1-63 of [A-Za-z0-9_.-], starting alphanumeric")
        if not IMAGE_REF_RE.fullmatch(self.image):
            raise InvalidSpec("image", "must name an image: 1-255 printable characters, no spaces")
        if not self.command:
            raise InvalidSpec("command", "must not be empty")
        if not self.workdir.startswith("/"):
            raise InvalidSpec("workdir", "must be an absolute path")
        for name, value in (
            ("cpu_millicores", self.cpu_millicores),
            ("memory_bytes", self.memory_bytes),
            ("pids_max", self.pids_max),
            ("disk_bytes", self.disk_bytes),
            ("max_lifetime_seconds", self.max_lifetime_seconds),
        ):
            if value is not None and value <= 0:
                raise InvalidSpec(name, "must be positive")
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                raise InvalidSpec("env", f"bad variable name {key!r}")
        for mf in self.mounted_files:
            if not mf.path.startswith("/") or ".." in mf.path.split("/"):
                raise InvalidSpec("mounted_files", f"bad path {mf.path!r}")
        _check_mount_points(self)


def _check_mount_points(spec: SandboxSpec) -> None:
    """Volume and scratch mount points are distinct and none lies inside another."""
    if len(spec.volumes) > MAX_VOLUMES:
        raise InvalidSpec("volumes", f"at most {MAX_VOLUMES} persistent volumes per sandbox")
    points = [v.mount_path for v in spec.volumes]
    if spec.scratch is not None:
        points.append(spec.scratch.mount_path)
    normal = [check_mount_path(p, "volumes.mount_path") for p in points]
    for i, one in enumerate(normal):
        for other in normal[i + 1 :]:
            if one == other or one.startswith(other + "/") or other.startswith(one + "/"):
                raise InvalidSpec("volumes.mount_path", f"{one!r} and {other!r} overlap")


class OutputChunk(NamedTuple):
    """Output of an exec'd process, as produced (``stream``, ``data``)."""

    stream: Stream
    data: bytes


class LogChunk(NamedTuple):
    """One chunk of the main process's output with the time it was read (unix seconds)."""

    timestamp: float
    stream: Stream
    data: bytes


class FileReader(ABC):
    """A file opened for reading inside a sandbox: its size, then its bytes in order.

    Iterate it for the chunks; :meth:`aclose` releases it whether or not it was read to
    the end (always call it, e.g. with ``contextlib.aclosing``).
    """

    size: int
    """The size when opened; -1 when it is not a regular file."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]:
        """The file's bytes in order."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the file (idempotent)."""


class BufferedFileReader(FileReader):
    """A :class:`FileReader` over bytes already read (backends that cannot stream)."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self._data: bytes | None = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        data, self._data = self._data, None
        if data:
            yield data

    async def aclose(self) -> None:
        """Drop the bytes."""
        self._data = None


@dataclass(frozen=True)
class PublishedPort:
    """An exposed container port and where the host publishes it."""

    container_port: int
    host_ip: str
    host_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class SandboxStats:
    """Resource usage read from the sandbox's cgroups."""

    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    pids: int
    oom_kills: int = 0
    # Bytes used on the sandbox's writable layer (its root file system); 0 when unknown.
    disk_bytes: int = 0


ConnectionDecision = Literal["allowed", "dropped", "rejected"]
"""What the host's firewall did with an outbound connection attempt."""


@dataclass(frozen=True)
class ConnectionAttempt:
    """An outbound connection a sandbox attempted, as the host's firewall saw and decided it.

    Repeats of one attempt (same sandbox, protocol, destination, port and decision) seen
    within a short window arrive folded, ``count`` saying how many; ``at`` is the first.
    """

    sandbox_id: str
    at: float
    protocol: str
    destination: str
    port: int
    decision: ConnectionDecision
    rule: str
    count: int = 1


@dataclass(frozen=True)
class SandboxState:
    """What the backend knows about a sandbox: ``state``, exit code and why it ended."""

    sandbox_id: str
    state: Literal["created", "running", "exited"]
    exit_code: int | None = None
    # exited | stopped | lifetime | oom | killed | start_failed | lost (no exit status kept)
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    ports: tuple[PublishedPort, ...] = ()
    # A running sandbox whose processes are frozen (``Backend.pause``); it stays so across
    # a runner restart, so a recovering runner reads it from here.
    paused: bool = False


@dataclass(frozen=True)
class Fingerprint:
    """What this backend can do on this host, as the runner reports it to the control plane.

    The control plane places a sandbox only on a runner whose backend is ``available`` and
    lists the sandbox's egress type (``egress_types``: ``none``, ``internet``,
    ``allowlist``), ingress type (``ingress_types``: ``public``, ``internal``) and, for GPU
    requests, ``gpus``; so a backend must list what it really provides here.
    """

    name: str
    available: bool
    reason: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    cpu_millicores: int = 0
    memory_bytes: int = 0
    egress_types: tuple[str, ...] = ()
    ingress_types: tuple[str, ...] = ()
    gpus: bool = False
    volumes: bool = False  # persistent volumes (``Backend.prepare_volume``)


class ExecSession(ABC):
    """A process started by ``Backend.exec``: stream stdin in, iterate output, wait, kill."""

    tty: bool

    @abstractmethod
    async def write_stdin(self, data: bytes) -> None:
        """Write to the process's stdin (or terminal), waiting while the pipe is full."""

    @abstractmethod
    async def close_stdin(self) -> None:
        """Signal end of input (for a TTY: an end-of-file character)."""

    @abstractmethod
    async def resize(self, width: int, height: int) -> None:
        """Change the terminal size (no-op without a TTY)."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        """Output chunks as the process produces them; ends after the process exits."""

    @abstractmethod
    async def wait(self) -> int:
        """The exit code: the status, or 128+N if killed by signal N."""

    @abstractmethod
    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process (and its process group)."""

    @abstractmethod
    async def close(self) -> None:
        """Release everything; kills the process if it still runs."""


@dataclass(frozen=True)
class BackendConfig:
    """What a runner tells any backend it builds, whichever backend it is.

    ``data_dir`` is the backend's own directory (it lays it out as it likes); the CPU and
    memory bounds are the runner's allocatable capacity, which all sandboxes together must
    stay within (None: not bounded beyond the host).
    """

    data_dir: Path
    cpu_millicores: int | None = None
    memory_bytes: int | None = None


class Backend(ABC):
    """One way of running sandboxes. Methods raise the errors of ``errors.py``."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: BackendConfig) -> Backend:
        """The backend as a runner runs it; cheap: nothing starts before the event loop."""

    @abstractmethod
    async def fingerprint(self) -> Fingerprint:
        """Report availability, attributes and capacity; never raises for "unavailable"."""

    @abstractmethod
    def image_refs(self) -> list[str]:
        """Images a sandbox may name now (``name:tag``, plus ``name`` for a ``latest`` tag).

        The runner advertises them for placement. It may walk the disk: the runner calls it
        off the event loop and caches the answer for a few seconds.
        """

    def disk_room_bytes(self) -> int | None:
        """The largest writable layer (``SandboxSpec.disk_bytes``) it can make now; None: any.

        Reported with every heartbeat, so placement skips a runner whose disk is full rather
        than sending it Starts that fail. Called on the event loop: it must be quick (one
        ``statvfs``). The default reports no limit.
        """
        return None

    @abstractmethod
    async def create(self, spec: SandboxSpec) -> None:
        """Build the isolated environment; the main process is not started yet.

        ``ImageUnavailable`` when ``spec.image`` is not one of :meth:`image_refs`.
        """

    @abstractmethod
    async def start(self, sandbox_id: str) -> None:
        """Start the main process (its output goes to the sandbox's log)."""

    async def create_and_start(self, spec: SandboxSpec) -> None:
        """:meth:`create`, then :meth:`start`; on failure nothing of the sandbox is left.

        The runner's cold path. A backend that can start the main process as part of its
        set-up overrides this to save the hand-off between the two (the local backend's
        agent starts it before reporting ready). A failed start raises
        ``SandboxStartError`` with why, after the sandbox was destroyed.
        """
        await self.create(spec)
        try:
            await self.start(spec.sandbox_id)
        except BaseException:
            with contextlib.suppress(BackendError):
                await asyncio.shield(self.destroy(spec.sandbox_id))
            raise

    @abstractmethod
    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tty: bool = False,
        tty_size: tuple[int, int] | None = None,
    ) -> ExecSession:
        """Start another process inside the running sandbox; ``tty_size`` is (width, height)."""

    @abstractmethod
    async def wait(self, sandbox_id: str) -> int:
        """Wait for the main process to end; its exit code (128+N for signal N)."""

    @abstractmethod
    async def stop(self, sandbox_id: str, grace_seconds: float = 10.0) -> int:
        """SIGTERM the main process, SIGKILL everything after the grace period; exit code."""

    @abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """Kill anything left and remove every trace (processes, mounts, cgroups, network)."""

    @abstractmethod
    async def stats(self, sandbox_id: str) -> SandboxStats:
        """Current resource usage."""

    @abstractmethod
    async def state(self, sandbox_id: str) -> SandboxState:
        """Lifecycle state, exit code and published ports."""

    @abstractmethod
    async def recover(self) -> list[str]:
        """After a runner restart: re-attach, and return the ids of sandboxes still alive."""

    @abstractmethod
    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes,
        *,
        make_parents: bool = False,
        mode: int = 0o644,
    ) -> None:
        """Write a file as the sandbox's own user sees its filesystem."""

    @abstractmethod
    async def read_file(self, sandbox_id: str, path: str, *, max_bytes: int | None = None) -> bytes:
        """Read a file as the sandbox's own user sees its filesystem."""

    async def write_file_stream(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes | memoryview],
        *,
        make_parents: bool = False,
        mode: int = 0o644,
    ) -> int:
        """Write a file from ``chunks`` in order; the size written.

        Chunks are bytes-like: ``bytes``, or ``memoryview`` s into the frames they arrived in
        (the in-process runner link passes them without a copy).

        Backends that can should stream in constant memory; this default gathers the
        bytes and calls :meth:`write_file`.
        """
        data = b"".join([chunk async for chunk in chunks])
        await self.write_file(sandbox_id, path, data, make_parents=make_parents, mode=mode)
        return len(data)

    async def open_file(
        self, sandbox_id: str, path: str, *, max_bytes: int | None = None
    ) -> FileReader:
        """Open a file for a streamed read (errors as :meth:`read_file` raises them).

        Backends that can should stream in constant memory; this default reads it whole.
        """
        return BufferedFileReader(await self.read_file(sandbox_id, path, max_bytes=max_bytes))

    @abstractmethod
    def logs(
        self, sandbox_id: str, *, follow: bool = False, since: float | None = None
    ) -> AsyncIterator[LogChunk]:
        """The main process's output, also after it ended; ``follow`` waits for more."""

    @abstractmethod
    async def close(self) -> None:
        """Release runner-side resources; running sandboxes keep running."""

    # -- pause (optional; see the module docstring) ----------------------------------------------
    supports_pause: ClassVar[bool] = False

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of a running sandbox (idempotent).

        Raises ``SandboxNotRunning`` when its main process has ended, ``PauseUnsupported``
        when it cannot be paused.
        """
        raise PauseUnsupported(f"the {self.name} backend cannot pause sandboxes")

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox: its processes continue where they were (idempotent)."""
        raise PauseUnsupported(f"the {self.name} backend cannot pause sandboxes")

    # -- counters (optional) ----------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Counts of what the backend did on its own since it started, by event name.

        The runner publishes them as ``sandboxd_runner_backend_events_total{event}``. Read
        from the metrics server's thread, so reading them must not touch the event loop.
        A backend with nothing to count (the default) has none.
        """
        return {}

    # -- connection trail (optional) --------------------------------------------------------------
    async def connection_attempts(self) -> AsyncIterator[list[ConnectionAttempt]]:
        """Batches of outbound connection attempts by this backend's sandboxes, as they happen.

        Never written by anything inside a sandbox: a backend reports what its host's
        firewall saw. Iterated once, by the runner, for as long as it runs. A backend that
        cannot see attempts (the default) ends the iteration at once.
        """
        return
        yield

    # -- scratch file systems (optional; see ScratchSpec) -----------------------------------------
    supports_scratch: ClassVar[bool] = False

    async def open_scratch_archive(self, sandbox_id: str) -> FileReader:
        """The sandbox's scratch file system as a tar archive, streamed in constant memory.

        Consistent: taken while nothing writes (a frozen file system, or a sandbox whose
        processes ended). Entries are directories, regular files and symlinks (as text,
        never followed); owners are the sandbox's own ids. ``SandboxNotFound`` without a
        sandbox, ``BackendUnavailable`` when it has no scratch file system (or the backend
        has none at all: the default).
        """
        raise BackendUnavailable(f"the {self.name} backend has no scratch file systems")

    # -- persistent volumes (optional; see VolumeBinding) -----------------------------------------
    supports_volumes: ClassVar[bool] = False

    async def prepare_volume(self, source: VolumeSource, *, create: bool) -> None:
        """Make sure the volume's directory exists (``create``: make it when missing).

        ``BackendUnavailable`` with the reason when it does not (or cannot) exist: the
        default, for a backend without volumes.
        """
        raise BackendUnavailable(f"the {self.name} backend has no persistent volumes")

    # -- warm pools (optional; see the module docstring) -----------------------------------------
    supports_warm_pools: ClassVar[bool] = False

    async def prepare(self, spec: SandboxSpec) -> str:
        """Build a sandbox for ``spec`` ahead of time (not started, id not yet known); its slot.

        ``spec.sandbox_id`` is ignored; the slot name is the backend's own and never a
        sandbox id. Only ``claim`` or ``discard`` use it.
        """
        raise BackendUnavailable(f"the {self.name} backend keeps no warm sandboxes")

    async def claim(self, slot: str, spec: SandboxSpec) -> None:
        """Make prepared ``slot`` sandbox ``spec.sandbox_id`` and start its main process.

        ``spec`` must match the one ``slot`` was prepared with in everything but what only
        matters at start: id, hostname, command, environment, working directory, lifetime.
        Afterwards the sandbox is an ordinary one (``state``, ``stop``, ``destroy``,
        ``recover`` know it by its id). Raises ``SandboxStartError`` when the slot can no
        longer be used (it is discarded then); the caller creates the sandbox cold instead.
        """
        raise BackendUnavailable(f"the {self.name} backend keeps no warm sandboxes")

    async def discard(self, slot: str) -> None:
        """Destroy a prepared slot nobody will claim (no error if it is already gone)."""
        return None

    async def discard_prepared(self) -> int:
        """Destroy every slot a previous runner process prepared; how many there were."""
        return 0
