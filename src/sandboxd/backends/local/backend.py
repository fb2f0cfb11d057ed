"""``LocalBackend``: sandboxes as namespaces + overlay + cgroups on the runner's own host.

Why direct namespace calls (via the zygote and agent) and not bubblewrap: bubblewrap builds
a sandbox well but cannot *enter* one, so every exec would need ``nsenter`` (one more
program execution, a fork for the PID namespace, and no way to drop capabilities or join
the cgroup before the user's code runs). With a pre-forked Python zygote, create is a few
system calls and two forks, and exec is a request to the sandbox's PID 1, which is already
inside every namespace and cgroup with capabilities dropped: one ``vfork``+``execve``.

This module is the glue: it validates, takes a writable layer (``disk``), creates cgroups
and networks (``cgroups``, ``network``), asks the zygote for the process side, and maps agent
replies to the typed errors of ``sandboxd.backends.errors``. Files and logs live in
``files.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from sandboxd.images.store import ImageError, ImageNotFound, ImageStore

from ..base import (
    DEFAULT_PATH,
    Backend,
    BackendConfig,
    ConnectionAttempt,
    EgressType,
    ExecSession,
    FileReader,
    Fingerprint,
    LogChunk,
    SandboxSpec,
    SandboxState,
    SandboxStats,
    VolumeSource,
)
from ..errors import (
    BackendError,
    BackendUnavailable,
    ImageUnavailable,
    InvalidSpec,
    PauseUnsupported,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SandboxStartError,
)
from . import files, freezer, log_budget, process
from .agent import MAX_EXECS
from .cgroup_primer import CgroupPrimer
from .cgroups import CgroupError, CgroupManager
from .connection_trail import ConnectionTrail
from .disk import DEFAULT_READY, DiskLayers
from .ingress import PortPublisher
from .keeper import NATIVE_KEEPER
from .network import Lease, NetworkManager
from .network_pool import DEFAULT_READY_NETWORKS, PreparedNetworks
from .orphans import ORPHAN_SWEEP_SECONDS, OrphanSweeper, backend_group
from .owners import OwnerLock
from .parent_cgroup import ParentLimits
from .prepared_ids import REFILL_DELAY_SECONDS, PreparedIdRanges
from .scratch import LockedReader, ScratchArchiveReader, ScratchFs, make_scratch
from .shared_files import SharedFiles
from .spawn_request import SpawnSettings, spawn_request
from .state import SandboxRecord
from .supervisor import ZygoteClient, ZygoteLost
from .syscalls import process_start_time
from .unrecorded import end_unknown, forget_unrecorded, known_names
from .userns import IdRangePool
from .volumes import VolumeDirs
from .warm import WarmSlots

log = logging.getLogger(__name__)

# How long a teardown waits for a killed sandbox's keeper to write exit.json and end (it
# takes milliseconds; a stuck one is SIGKILLed after this).
KEEPER_END_SECONDS = 5.0


class LocalBackend(Backend):
    """Runs sandboxes on this host. Needs root, overlayfs, ext4, loop devices and cgroups.

    ``ready_layers`` is how many writable layers of each recently used size are kept made
    ahead (``disk.py``); 0 makes every layer on the create path. ``native_keeper=False``
    keeps each sandbox's keeper in Python after set-up (``keeper.py`` says why the native
    one is the default; tests use this to check both behave alike).
    ``orphan_sweep_seconds``: how often it looks for what dead backends left (``orphans.py``).
    """

    name = "local"

    @classmethod
    def from_config(cls, config: BackendConfig) -> LocalBackend:
        """State in ``<data_dir>/backend``, images in ``<data_dir>/images``, capacity capped."""
        limits = ParentLimits(config.cpu_millicores, config.memory_bytes)
        root = Path(config.data_dir)
        return cls(root / "backend", images=ImageStore(root), parent_limits=limits)

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        images: ImageStore,
        network_pool: str = "10.213.0.0/16",
        log_limit_bytes: int = 64 << 20,
        log_budget_bytes: int = 2 << 30,
        lifetime_grace_seconds: float = 5.0,
        seccomp: bool = True,
        max_execs: int = MAX_EXECS,
        parent_limits: ParentLimits | None = None,
        ready_layers: int = DEFAULT_READY,
        ready_networks: int = DEFAULT_READY_NETWORKS,
        native_keeper: bool = True,
        orphan_sweep_seconds: float = ORPHAN_SWEEP_SECONDS,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.images = images
        self.sandboxes_dir = self.data_dir / "sandboxes"
        key = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:8]
        self._group = backend_group(key)
        self._cgroups: CgroupManager | None = None
        self._primer = CgroupPrimer()
        self._building = 0  # sandboxes being built now (creates and warm slots)
        self._shared = SharedFiles(self.data_dir)
        self._key = key
        # Held while this backend lives; names its data directory (owners.py).
        self._owner = OwnerLock(key, data_dir=str(self.data_dir))
        self._net = NetworkManager(key, network_pool, watch=True)  # rule_watch.py
        self._nets = PreparedNetworks(self._net, ready_networks)
        self._trail = ConnectionTrail(self._net, self._leases_by_tag)
        self._reaped = False
        self._orphans: OrphanSweeper | None = None  # made once the cgroup layout is known
        self._orphan_sweep_seconds = orphan_sweep_seconds
        self._ids = IdRangePool(self._group)
        self._zygote = ZygoteClient(self.data_dir / "run")
        self._ranges = PreparedIdRanges(self._ids, self._zygote)
        self._disk = DiskLayers(self.data_dir / "disk", ready_layers)
        # Scratch file systems come in any size: made on the create path, none ahead.
        self._scratch_layers = DiskLayers(self.data_dir / "scratch-disk", ready=0)
        self._scratch: dict[str, ScratchFs] = {}
        self._volumes = VolumeDirs(self.data_dir / "volumes")
        self._records: dict[str, SandboxRecord] = {}
        self._release_tasks: set[asyncio.Future[None]] = set()
        self._release_locks: dict[str, asyncio.Lock] = {}
        self._budget = log_budget.BudgetKeeper(self.sandboxes_dir, log_budget_bytes)
        self._spawn_settings = SpawnSettings(
            log_limit_bytes, lifetime_grace_seconds, seccomp, max_execs, native_keeper
        )
        self._parent_limits = parent_limits  # None: this host's allocatable capacity
        if native_keeper and not NATIVE_KEEPER.exists():
            log.warning(
                "%s is not built (run scripts/setup.sh): keepers stay in Python, about 2 MiB "
                "more per idle sandbox",
                NATIVE_KEEPER,
            )
        self._warm = WarmSlots(self)
        self._built = False

    # -- plumbing ----------------------------------------------------------------------------
    async def _ready(self) -> CgroupManager:
        if os.geteuid() != 0:
            raise BackendUnavailable("the local backend needs root (namespaces, mounts, cgroups)")
        await self._owner.hold()  # before anything is made ahead: this key is alive
        self._trail.open()  # before any lease is made: new leases log to its group
        cgroups = self._cgroup_manager()
        if not self._primer.tried_fast:  # before the first move (a thread: it may wait 0.5 s)
            await asyncio.to_thread(self._primer.hold_fast_moves)
        await self._zygote.ensure()
        if not self._owner.alone:  # another live backend has this key: its ranges are its
            self._ranges.adopt_none()
        self._ranges.refill()
        if not self._reaped:  # networks a killed predecessor made ahead (none is alive)
            self._reaped = True
            if self._owner.alone:
                await self._nets.reap()
            layout, limits = cgroups.layout, cgroups.limits
            self._orphans = OrphanSweeper(  # what other backends, dead for good, left behind
                self._key,
                str(self._net.pool),
                remove_group=lambda group: CgroupManager(group, layout, limits).cleanup_group(),
                end_sandboxes=lambda group: asyncio.to_thread(
                    CgroupManager(group, layout, limits).end_sandboxes
                ),
                interval=self._orphan_sweep_seconds,
            )
            await self._orphans.sweep()
            self._orphans.start()
        return cgroups

    def _cgroup_manager(self) -> CgroupManager:
        """The cgroup manager (made once), without anything else ``_ready`` starts."""
        if self._cgroups is None:
            try:
                self._cgroups = CgroupManager(self._group, limits=self._parent_limits)
            except CgroupError as exc:
                raise BackendUnavailable(str(exc)) from exc
        return self._cgroups

    def _leases_by_tag(self) -> dict[str, tuple[str, Lease]]:
        return {
            rec.lease.tag: (rec.sandbox_id, rec.lease)
            for rec in list(self._records.values())
            if rec.lease is not None
        }

    async def connection_attempts(self) -> AsyncIterator[list[ConnectionAttempt]]:
        """Outbound connection attempts from the host firewall's log (connection_trail.py)."""
        if os.geteuid() != 0:
            return
        self._trail.open()
        async for batch in self._trail.batches():
            yield batch

    def _get(self, sandbox_id: str) -> SandboxRecord:
        try:
            return self._records[sandbox_id]
        except KeyError:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}") from None

    # -- lifecycle -----------------------------------------------------------------------------
    async def fingerprint(self) -> Fingerprint:
        """Availability (root, overlayfs, cgroups), modes, and this host's capacity."""
        from .fingerprint import probe

        return probe(self.name, self._net.pool)

    def disk_room_bytes(self) -> int | None:
        """How large a writable layer fits now (``DiskLayers.room``), for heartbeats."""
        return self._disk.room()

    async def create(self, spec: SandboxSpec) -> None:
        """Cgroups, network, then the zygote builds namespaces, overlay and agent."""
        await self._create(spec, start=False)

    async def create_and_start(self, spec: SandboxSpec) -> None:
        """:meth:`create`, and the agent starts the main process before it reports ready.

        The cold path's second request to the agent (a connection, a message, an answer)
        is gone: about 2 ms here alone, more when the runner's loop is busy.
        """
        await self._create(spec, start=True)

    async def _create(self, spec: SandboxSpec, *, start: bool) -> None:
        """Build the sandbox; once more, with a new zygote, when the zygote went away first.

        Why again: a zygote killed in the middle of a burst (by the OOM killer, by hand) failed
        every create it had not answered, though nothing of them ran (``ZygoteLost``).
        """
        try:
            await self._create_once(spec, start=start)
        except SandboxStartError as exc:
            if not isinstance(exc.__cause__, ZygoteLost):
                raise
            log.warning("%s; creating it again with a new zygote", exc)
            await self._create_once(spec, start=start)

    async def _create_once(self, spec: SandboxSpec, *, start: bool) -> None:
        cgroups = await self._ready()
        sid = spec.sandbox_id
        state_dir = self.sandboxes_dir / sid
        if sid in self._records or state_dir.exists():
            raise SandboxExists(f"sandbox {sid!r} already exists")
        rootfs = self._rootfs(spec.image)
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state_dir.mkdir(mode=0o700)
        net = spec.network
        rec = SandboxRecord(sid, state_dir, net.egress, net.cidrs, net.ingress, net.exposed_ports)
        self._records[sid] = rec
        try:
            await self._build(rec, spec, cgroups, rootfs, start)
            # Layers and networks are made ahead later: the client's first exec comes now.
            asyncio.get_running_loop().call_later(REFILL_DELAY_SECONDS, self._refill)
        except BaseException as exc:
            rec.kill_agent()
            await self._cleanup(rec)
            if isinstance(exc, SandboxStartError | asyncio.CancelledError):
                raise
            if isinstance(exc, BackendUnavailable) and not isinstance(exc, ZygoteLost):
                raise  # no zygote starts, say: every create fails (ZygoteLost is retried)
            raise SandboxStartError(f"creating sandbox {sid!r} failed: {exc}") from exc

    def _refill(self) -> None:
        self._disk.refill()
        self._nets.refill()

    def _rootfs(self, image: str) -> Path:
        """The image's root file system, shared read-only by every sandbox of that image."""
        try:
            rootfs = self.images.resolve(image).absolute()
        except ImageNotFound as exc:
            raise ImageUnavailable(image, str(exc)) from None
        except ImageError as exc:
            raise InvalidSpec("image", str(exc)) from None
        if not rootfs.is_dir():
            raise ImageUnavailable(image, f"image {image!r} has no root file system at {rootfs}")
        return rootfs

    def image_refs(self) -> list[str]:
        """The image store's references."""
        return self.images.refs()

    async def _build(
        self,
        rec: SandboxRecord,
        spec: SandboxSpec,
        cgroups: CgroupManager,
        rootfs: Path,
        start: bool = False,
    ) -> None:
        self._built = True  # recover() no longer ends what it has no record of
        rec.image_rootfs = str(rootfs)  # saved with the record: images in use stay
        disk_fd = await self._disk.take(spec.disk_bytes)  # a failure is wrapped by the caller
        self._building += 1
        try:
            await self._build_with_disk(rec, spec, cgroups, rootfs, disk_fd, start)
        finally:
            self._building -= 1
            os.close(disk_fd)  # the zygote got its own copy with the spawn request

    async def _build_with_disk(  # noqa: PLR0917 (one call site)
        self,
        rec: SandboxRecord,
        spec: SandboxSpec,
        cgroups: CgroupManager,
        rootfs: Path,
        disk_fd: int,
        start: bool,
    ) -> None:
        mount_dir = self._shared.mount_points()
        resolv = None
        if rec.egress is not EgressType.NONE:
            resolv = self._shared.resolv_file(self._net.sandbox_resolv_conf())
        file_map = rec.stage_files(spec.mounted_files, resolv)
        rec.ids = self._ranges.take(rec.sandbox_id)
        rec.cgroup = cgroups.create(rec.sandbox_id)
        rec.save()
        rec.cgroup.set_limits(
            cpu_millicores=spec.cpu_millicores,
            memory_bytes=spec.memory_bytes,
            pids_max=spec.pids_max,
        )
        # Unless moves are fast (fast_moves.py), prime the keeper's move now that the cgroups
        # exist (a priming write holds the cgroup mutex: before their mkdir it would delay
        # them); not when other builds run (their moves keep the lock open already).
        if self._building == 1:
            self._primer.prime()
        if rec.egress is not EgressType.NONE:

            def claimed(lease: Lease) -> None:
                rec.lease = lease
                rec.save()  # before any command: a crash in the middle leaves it recorded

            await self._nets.take(
                rec.sandbox_id, rec.egress, rec.cidrs, spec.network.blocked, claimed
            )
        hostname = spec.hostname or rec.sandbox_id
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": hostname, **spec.env}
        handed: tuple[int, ...] = (disk_fd,)
        if spec.scratch is not None:
            scratch_fd, kept = await make_scratch(
                self._scratch_layers, spec.scratch, rec.ids.first, rec.ids.count
            )
            self._scratch[rec.sandbox_id] = kept
            handed = (disk_fd, scratch_fd)
        try:
            for volume in spec.volumes:  # detached binds, resolved without symlinks (volumes.py)
                handed = (*handed, await asyncio.to_thread(self._volumes.open_tree, volume.source))
        except BaseException:
            for fd in handed[1:]:
                os.close(fd)
            raise
        try:
            netns_fd = self._net.netns_fd(rec.lease) if rec.lease is not None else None
            if rec.lease is not None and netns_fd is None:  # not made by this process: a bug
                raise SandboxStartError(f"sandbox {rec.sandbox_id!r}: its network has no netns")
            settings = self._spawn_settings
            request = spawn_request(rec, spec, rootfs, file_map, env, hostname, settings)
            request["start"] = start  # the agent starts the main process before "ready"
            request["mount_dir"] = mount_dir
            extra = (netns_fd,) if netns_fd is not None else ()
            reply = await self._zygote.spawn(request, fds=(*handed, *extra))
        finally:
            for fd in handed[1:]:
                os.close(fd)  # the zygote got its own copy
            if rec.lease is not None:
                self._net.let_go(rec.lease)  # the sandbox holds it now, or it failed
        if not reply.get("ok"):
            raise SandboxStartError(f"sandbox {rec.sandbox_id!r}: {reply.get('error')}")
        rec.agent_pid = int(reply["pid"])
        rec.agent_start_time = process_start_time(rec.agent_pid)
        rec.keeper_pid = int(reply["keeper_pid"])
        rec.keeper_start_time = process_start_time(rec.keeper_pid)
        rec.started = start
        rec.attach()
        rec.save()
        self._release_on_exit(rec)
        if reply.get("start_error"):  # set up, but the main process did not start: _create
            # ends the sandbox as it ends any failed create
            raise SandboxStartError(f"sandbox {rec.sandbox_id!r}: {reply['start_error']}")
        if rec.ingress is not None and rec.exposed_ports:
            await self._publish(rec)

    def _release_on_exit(self, rec: SandboxRecord) -> None:
        """Once PID 1 is gone, give back the kernel resources; keep logs and exit code.

        A stopped sandbox must leave nothing behind (no cgroup, veth, netns or published
        port), while its log and exit code stay readable until ``destroy``.
        """
        task = asyncio.ensure_future(self._release_after_exit(rec))
        self._release_tasks.add(task)
        task.add_done_callback(self._release_tasks.discard)

    async def _release_after_exit(self, rec: SandboxRecord) -> None:
        await asyncio.shield(rec.exited_future())
        await self._release(rec)

    async def _release(self, rec: SandboxRecord) -> None:
        # stop(), destroy() and the exit watcher may all release: one at a time, so each
        # resource is torn down once and nobody returns before the teardown is finished.
        async with self._release_locks.setdefault(rec.sandbox_id, asyncio.Lock()):
            if rec.publisher is not None:
                await rec.publisher.close()
                rec.publisher = None
            if rec.cgroup is not None:
                await asyncio.to_thread(rec.cgroup.remove)
                rec.cgroup = None
            if rec.lease is not None:
                await self._net.teardown(rec.lease, rec.egress, rec.cidrs)
                rec.lease = None
            if rec.ids is not None and rec.cgroup is None:
                # The cgroup is gone, so no process of the sandbox (all of them ran in it)
                # runs as these ids any more: the range may go to the next sandbox.
                self._ids.release(rec.ids)
                rec.ids = None
            if rec.state_dir.exists():
                rec.save()
        self._budget.poke()

    async def _publish(self, rec: SandboxRecord) -> None:
        assert rec.ingress is not None and rec.agent_pid is not None
        netns_fd = os.open(f"/proc/{rec.agent_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        rec.publisher = PortPublisher(netns_fd)
        previous = {p.container_port: p.host_port for p in rec.ports}
        rec.ports = await rec.publisher.publish(rec.exposed_ports, rec.ingress, previous)
        rec.save()

    async def start(self, sandbox_id: str) -> None:
        """Ask the agent to start the main process.

        The record says "started" as soon as the request is out, written while the agent
        works on it rather than after its answer (a record write costs up to a millisecond
        here). A runner killed before the answer finds either the main process running or
        the agent's record of its failed start (an exit with reason ``start_failed``), so
        recovery reads the truth either way; a failed start is destroyed by the caller.
        """
        rec = self._get(sandbox_id)
        try:
            starting = process.send_request(rec.agent_socket, {"op": "start"})
        except OSError as exc:
            raise SandboxStartError(f"sandbox {sandbox_id!r} is not running: {exc}") from None
        rec.started = True
        try:
            rec.save()
        except BaseException:
            starting.close()
            raise
        try:
            reply = await process.reply_to(starting)
        except OSError as exc:
            raise SandboxStartError(f"sandbox {sandbox_id!r} is not running: {exc}") from None
        if "error" in reply:
            raise SandboxStartError(f"sandbox {sandbox_id!r}: {reply['error']['message']}")

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
        """Hand the agent pipes (or get a PTY master back) and stream."""
        rec = self._get(sandbox_id)
        if not argv:
            raise InvalidSpec("argv", "must not be empty")
        self._require_running(rec)
        try:
            return await process.open_exec(
                rec.agent_socket,
                list(argv),
                env=dict(env or {}),
                cwd=cwd,
                tty=tty,
                tty_size=tty_size,
            )
        except OSError:
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running") from None

    async def wait(self, sandbox_id: str) -> int:
        """Wait for PID 1 to go, then read the exit code it recorded (137 if it was killed).

        PID 1 exits only after every other process of the sandbox is gone (the kernel kills
        and reaps them first), so when this returns nothing of the sandbox runs any more.
        """
        rec = self._get(sandbox_id)
        await asyncio.shield(rec.exited_future())
        return rec.exit_code()

    async def stop(self, sandbox_id: str, grace_seconds: float = 10.0) -> int:
        """Agent sends SIGTERM, SIGKILLs all after the grace; we SIGKILL PID 1 as a backstop."""
        rec = self._get(sandbox_id)
        await self._thaw(rec)  # a paused agent could not answer, nor its processes end
        if rec.is_running():
            try:
                await process.request(rec.agent_socket, {"op": "stop", "grace": grace_seconds})
            except OSError:
                rec.kill_agent()
            try:
                await asyncio.wait_for(self.wait(sandbox_id), grace_seconds + 5)
            except TimeoutError:
                rec.kill_agent()
        code = await self.wait(sandbox_id)
        await self._release(rec)  # stopped means released, before we answer
        return code

    async def destroy(self, sandbox_id: str) -> None:
        """Kill PID 1 (the kernel kills the rest), then remove cgroups, network and state."""
        rec = self._get(sandbox_id)
        await self._thaw(rec)
        if rec.pidfd is not None:
            rec.kill_agent()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(rec.exited_future()), 10)
        await self._cleanup(rec)

    async def _cleanup(self, rec: SandboxRecord) -> None:
        scratch = self._scratch.pop(rec.sandbox_id, None)
        if scratch is not None:
            async with scratch.lock:  # an archive being written finishes first
                scratch.close()
        await self._release(rec)
        self._release_locks.pop(rec.sandbox_id, None)
        await rec.keeper_ended(KEEPER_END_SECONDS)  # then nothing writes in the state dir
        rec.close_fds()
        shutil.rmtree(rec.state_dir, ignore_errors=True)
        self._records.pop(rec.sandbox_id, None)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        """Usage from the sandbox's cgroups, and its root file system's used bytes."""
        rec = self._get(sandbox_id)
        raw = rec.cgroup.stats() if rec.cgroup else {}
        return SandboxStats(
            cpu_seconds=raw.get("cpu_usage_ns", 0) / 1e9,
            memory_bytes=raw.get("memory_bytes", 0),
            memory_peak_bytes=raw.get("memory_peak_bytes", 0),
            pids=raw.get("pids", 0),
            oom_kills=raw.get("oom_kills", 0),
            disk_bytes=files.root_used_bytes(rec.agent_pid) if rec.is_running() else 0,
        )

    async def state(self, sandbox_id: str) -> SandboxState:
        """Created / running / exited, with exit code, reason and published ports."""
        rec = self._get(sandbox_id)
        info = rec.exit_info()
        ports = tuple(rec.ports)
        if info is None and rec.is_running():
            paused = rec.cgroup is not None and freezer.is_frozen(rec.cgroup)
            if not rec.started:
                return SandboxState(sandbox_id, "created", ports=ports, paused=paused)
            return SandboxState(sandbox_id, "running", ports=ports, paused=paused)
        code = rec.exit_code()
        # No exit record at all: neither the agent nor its keeper saw the end (the host went
        # down, or the keeper was killed): "lost", which the runner reports as FAILED.
        reason = info["reason"] if info else "lost"
        if code == 137 and reason == "exited" and rec.cgroup and rec.cgroup.stats()["oom_kills"]:
            reason = "oom"
        started = info.get("started_at") if info else None
        finished = info.get("finished_at") if info else None
        return SandboxState(sandbox_id, "exited", code, reason, started, finished, ports)

    async def recover(self) -> list[str]:
        """Reload every state directory; re-attach to live agents; re-publish their ports."""
        alive: list[str] = []
        found = self.sandboxes_dir.iterdir() if self.sandboxes_dir.is_dir() else ()
        for state_dir in sorted(found):
            try:
                rec = SandboxRecord.load(state_dir)
            except (FileNotFoundError, ValueError):  # no record, or not one complete line
                if state_dir.name not in self._records:  # not a create in progress here
                    with contextlib.suppress(BackendUnavailable):
                        forget_unrecorded(state_dir, self._ids, self._cgroup_manager())
                continue
            except (OSError, KeyError, TypeError):  # saved whole once: it may run, keep it
                continue
            old = self._records.pop(rec.sandbox_id, None)
            if old is not None:
                old.close_fds()
            self._records[rec.sandbox_id] = rec
            if rec.lease is not None:
                self._net.claim(rec.lease, rec.sandbox_id)
            if rec.ids is not None:
                self._ids.claim(rec.ids)
            if not rec.agent_alive():
                await self._release(rec)  # it ended while nobody watched: free what it held
                continue
            rec.attach()
            paused = rec.cgroup is not None and freezer.is_frozen(rec.cgroup)
            try:
                if not paused:  # a frozen agent cannot answer; its keeper says it lives
                    await process.request(rec.agent_socket, {"op": "ping"})
            except OSError:
                continue
            self._release_on_exit(rec)
            if rec.ingress is not None and rec.exposed_ports:
                await self._publish(rec)
            alive.append(rec.sandbox_id)
        # What it has no record of ends, before it built anything (no create escapes known).
        # Not through _ready(): nothing made ahead is touched here (nor a predecessor's).
        if not self._built and os.geteuid() == 0:
            self._trail.open()  # its leases logged to the group: their rules name it
            with contextlib.suppress(BackendUnavailable):
                known = known_names(self._records, self.sandboxes_dir, self._warm.names())
                await end_unknown(known, self._cgroup_manager(), self._ids, self._net)
        return alive

    # -- pause (freezer.py) --------------------------------------------------------------------
    supports_pause = True

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox in its cgroup (idempotent)."""
        rec = self._get(sandbox_id)
        if rec.cgroup is None or not rec.is_running():
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
        if not freezer.supported(rec.cgroup):
            raise PauseUnsupported(
                f"sandbox {sandbox_id!r} has no cgroup freezer (created before pausing "
                "existed, or the host's cgroup v1 has no freezer hierarchy mounted)"
            )
        try:
            await asyncio.to_thread(freezer.freeze, rec.cgroup)
        except freezer.FreezeError as exc:
            raise BackendError(f"sandbox {sandbox_id!r} could not be paused: {exc}") from None

    async def resume(self, sandbox_id: str) -> None:
        """Thaw the sandbox's processes (idempotent)."""
        rec = self._get(sandbox_id)
        if rec.cgroup is None or not rec.is_running():
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
        await self._thaw(rec)

    @staticmethod
    async def _thaw(rec: SandboxRecord) -> None:
        if rec.cgroup is not None and freezer.is_frozen(rec.cgroup):
            await asyncio.to_thread(freezer.thaw, rec.cgroup)

    # -- persistent volumes (volumes.py) ----------------------------------------------------------
    supports_volumes = True

    async def prepare_volume(self, source: VolumeSource, *, create: bool) -> None:
        """Make or find ``<data_dir>/volumes/<organization>/<claim>[/<sub_path>]``."""
        await asyncio.to_thread(self._volumes.prepare, source, create=create)

    # -- scratch file systems (scratch.py) -------------------------------------------------------
    supports_scratch = True

    async def open_scratch_archive(self, sandbox_id: str) -> FileReader:
        """A tar stream of the scratch file system: frozen while the sandbox runs (scratch.py)."""
        rec = self._get(sandbox_id)
        scratch = self._scratch.get(sandbox_id)
        if scratch is None:
            raise BackendUnavailable(
                f"sandbox {sandbox_id!r} has no scratch file system on this runner "
                "(none was asked for, or the runner restarted since it was made)"
            )
        await scratch.lock.acquire()
        try:
            reader = ScratchArchiveReader(scratch, freeze=rec.is_running())
            return LockedReader(reader, scratch.lock)
        except BaseException:
            scratch.lock.release()
            raise

    # -- warm pools (warm.py) ------------------------------------------------------------------
    supports_warm_pools = True

    async def prepare(self, spec: SandboxSpec) -> str:
        """Build a sandbox ahead of time under a slot name (``warm.py``)."""
        return await self._warm.prepare(spec)

    async def claim(self, slot: str, spec: SandboxSpec) -> None:
        """The slot becomes sandbox ``spec.sandbox_id``, started (``warm.py``)."""
        await self._warm.claim(slot, spec)

    async def discard(self, slot: str) -> None:
        """Destroy a slot nobody will claim."""
        await self._warm.discard(slot)

    async def discard_prepared(self) -> int:
        """Destroy the slots a previous runner process left behind."""
        return await self._warm.discard_prepared()

    # -- files and logs (files.py) --------------------------------------------------------------
    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes,
        *,
        make_parents: bool = False,
        mode: int = 0o644,
    ) -> None:
        """Write through a worker forked by the agent (sandbox credentials and view)."""
        rec = self._get(sandbox_id)
        self._require_running(rec)
        await files.write_file(rec.agent_socket, path, data, make_parents=make_parents, mode=mode)

    async def read_file(self, sandbox_id: str, path: str, *, max_bytes: int | None = None) -> bytes:
        """Read through a worker forked by the agent (sandbox credentials and view)."""
        rec = self._get(sandbox_id)
        self._require_running(rec)
        return await files.read_file(rec.agent_socket, path, max_bytes=max_bytes)

    async def write_file_stream(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes | memoryview],
        *,
        make_parents: bool = False,
        mode: int = 0o644,
    ) -> int:
        """Stream through a worker forked by the agent, in constant memory."""
        rec = self._get(sandbox_id)
        self._require_running(rec)
        return await files.write_file_stream(
            rec.agent_socket, path, chunks, make_parents=make_parents, mode=mode
        )

    async def open_file(
        self, sandbox_id: str, path: str, *, max_bytes: int | None = None
    ) -> FileReader:
        """Open through a worker forked by the agent; the bytes stream through a pipe."""
        rec = self._get(sandbox_id)
        self._require_running(rec)
        return await files.open_file(rec.agent_socket, path, max_bytes=max_bytes)

    def _require_running(self, rec: SandboxRecord) -> None:
        if not rec.is_running():
            raise SandboxNotRunning(f"sandbox {rec.sandbox_id!r} is not running")
        if rec.cgroup is not None and freezer.is_frozen(rec.cgroup):
            # Its agent is frozen too: a request would wait for the resume, not fail.
            raise SandboxPaused(f"sandbox {rec.sandbox_id!r} is paused")

    def logs(
        self, sandbox_id: str, *, follow: bool = False, since: float | None = None
    ) -> AsyncIterator[LogChunk]:
        """Chunks from ``main.log``; with ``follow``, until the sandbox has ended."""
        rec = self._get(sandbox_id)
        return files.follow_log(rec.log_path, lambda: not rec.is_running(), follow, since)

    def counters(self) -> dict[str, int]:
        """``firewall_repairs``: times the rule watch put back rules the host took away."""
        watch = self._net.watch
        return {"firewall_repairs": watch.repairs if watch is not None else 0}

    async def close(self) -> None:
        """Stop port relays and drop connections; shut the zygote down if nothing runs."""
        for task in list(self._release_tasks):
            task.cancel()
        if self._orphans is not None:
            await self._orphans.close()
        await self._warm.discard_all()  # ready but never claimed: nobody's sandboxes
        self._trail.close()
        await self._ranges.close()
        await self._nets.close()
        await self._net.close()  # its rule watch first: nothing is put back from here on
        await self._net.remove_unremoved()  # a last try for rules a failure left
        await self._budget.close()
        await self._disk.close()
        self._primer.close()
        any_alive = False
        for rec in list(self._records.values()):
            if rec.publisher is not None:
                await rec.publisher.close()
                rec.publisher = None
            running = rec.is_running()
            if not running and not rec.agent_alive():
                with contextlib.suppress(OSError, BackendError, CgroupError):
                    await self._release(rec)  # ended: its watcher may not have run yet
            any_alive = any_alive or running
            rec.close_fds()
        self._records.clear()
        if any_alive:
            self._zygote.close()
        else:
            await self._zygote.shutdown()
            if self._cgroups is not None:
                self._cgroups.cleanup_group()
        # Running sandboxes or claims left keep the lock file: all is ended and freed if this
        # data directory is deleted and nobody comes back (owners.py).
        left = any_alive or bool(self._ids.claimed() or self._net.claims())
        self._owner.release(keep_file=left)
