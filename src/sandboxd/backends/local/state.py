"""What the local backend keeps per sandbox, on disk and in memory.

Why on disk: a runner restart must find every sandbox again (``recover``), including ones
that ended while it was away, and their logs and exit codes. The state directory
``<data_dir>/sandboxes/<id>/`` holds ``record.jsonl`` (keeper and agent pids and start times,
cgroup paths, network lease, user id range, published ports, the parts of the spec recovery
needs), ``main.log`` and ``exit.json`` (written by the keeper, on the host side, never by
anything inside the sandbox), ``agent.log`` (the agent's own diagnostics), the mounted-file
sources, the agent's socket, and three empty mount points that are only ever mounted inside
the sandbox's own mount namespace.

A sandbox is alive while its keeper is: the keeper outlives PID 1 just long enough to drain
the output pipes and write ``exit.json``, so once it is gone everything about the sandbox's
end is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.record_log import append_record, read_record

from ..base import EgressType, IngressMode, MountedFile, PublishedPort
from .cgroups import SandboxCgroup
from .ingress import PortPublisher
from .network import Lease
from .syscalls import process_start_time
from .userns import IdRange

RECORD = "record.jsonl"
"""The record's file in a state directory: appended lines, the newest wins (record_log.py)."""
LEGACY_RECORD = "record.json"
"""Where versions before record.jsonl kept it; still read when there is no record.jsonl."""

KILLED_WITH_SANDBOX = 137

MAX_SOCKET_PATH = 100


@dataclass
class SandboxRecord:
    """One sandbox known to the backend."""

    sandbox_id: str
    state_dir: Path
    egress: EgressType = EgressType.NONE
    cidrs: tuple[str, ...] = ()
    ingress: IngressMode | None = None
    exposed_ports: tuple[int, ...] = ()
    cgroup: SandboxCgroup | None = None
    lease: Lease | None = None
    agent_pid: int | None = None
    agent_start_time: int | None = None
    keeper_pid: int | None = None
    keeper_start_time: int | None = None
    ids: IdRange | None = None
    ports: list[PublishedPort] = field(default_factory=list)
    started: bool = False
    # The image root file system it was built on (``sandboxd images rm`` refuses while used).
    image_rootfs: str = ""
    # runtime only: pidfd follows the keeper (the sandbox's lifetime), agent_pidfd PID 1
    pidfd: int | None = None
    agent_pidfd: int | None = None
    dir_fd: int | None = None
    publisher: PortPublisher | None = None
    exited: asyncio.Future[None] | None = None

    @property
    def agent_socket(self) -> str:
        """Path to the agent's socket, shortened through /proc/self/fd when too long."""
        path = str(self.state_dir / "agent.sock")
        if len(path) < MAX_SOCKET_PATH:
            return path
        if self.dir_fd is None:
            self.dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self.dir_fd}/agent.sock"

    @property
    def log_path(self) -> Path:
        """The main process's log."""
        return self.state_dir / "main.log"

    def exit_info(self) -> dict[str, Any] | None:
        """``exit.json`` as written by the agent, if it has been."""
        try:
            with open(self.state_dir / "exit.json") as fh:
                info: dict[str, Any] = json.load(fh)
                return info
        except (OSError, ValueError):
            return None

    def agent_alive(self) -> bool:
        """Whether the sandbox's keeper still runs (pid *and* start time match)."""
        return _alive(self.keeper_pid, self.keeper_start_time)

    def attach(self) -> None:
        """Open pidfds on the keeper and the agent, unless their pids now name others."""
        self.pidfd = _pidfd(self.keeper_pid, self.keeper_start_time)
        self.agent_pidfd = _pidfd(self.agent_pid, self.agent_start_time)

    def exited_future(self) -> asyncio.Future[None]:
        """Resolves when the agent (PID 1) is gone; one pidfd reader per sandbox."""
        loop = asyncio.get_running_loop()
        if self.exited is None:
            self.exited = fut = loop.create_future()
            if self.pidfd is None:
                fut.set_result(None)
            else:
                fd = self.pidfd

                def done() -> None:
                    loop.remove_reader(fd)
                    if not fut.done():
                        fut.set_result(None)

                loop.add_reader(fd, done)
        return self.exited

    def is_running(self) -> bool:
        """PID 1 alive (its pidfd not yet readable) and no exit recorded."""
        if self.pidfd is None or (self.exited is not None and self.exited.done()):
            return False
        if _readable(self.pidfd):
            return False
        return self.exit_info() is None

    def exit_code(self) -> int:
        """Recorded exit code; 137 when PID 1 was killed before it could record one."""
        info = self.exit_info()
        return int(info["exit_code"]) if info else KILLED_WITH_SANDBOX

    def kill_agent(self) -> None:
        """SIGKILL PID 1 through its pidfd (the kernel then kills the whole sandbox).

        Its keeper then records "killed" and exits; if PID 1 is already gone but the keeper
        is stuck, the keeper itself is killed.
        """
        for fd in (self.agent_pidfd, self.pidfd):
            if fd is not None and not _readable(fd):
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                return

    async def keeper_ended(self, timeout: float) -> None:
        """Return once the keeper is gone, killing it if it outlives ``timeout`` seconds.

        Why wait: the keeper writes ``exit.json`` (and may append to ``agent.log``) in the
        state directory as it ends. Removing the directory before then races it: a file made
        while ``rmtree`` lists the directory leaves the directory, and so the sandbox's id,
        taken (seen in CI: a failed create whose id was then "already exists").
        """
        if self.pidfd is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.exited_future()), timeout)
        except TimeoutError:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited_future()), timeout)

    def stage_files(
        self, mounted: tuple[MountedFile, ...], resolv_conf: str | None
    ) -> list[list[str]]:
        """Write the mounted files into ``files/`` here; ``[path inside, host path]`` each.

        The keeper seals a copy of each (no host descriptor crosses into the sandbox).
        ``resolv_conf`` (the host file of the runner's resolver settings, for a sandbox
        with a network, shared by all: ``SharedFiles.resolv_file``) is added unless the
        sandbox mounts its own. ``files/`` is made only for mounted files: most sandboxes
        have none, and every directory is an inode made and freed on the create's path.
        """
        file_map = []
        if mounted:
            (self.state_dir / "files").mkdir(mode=0o700)
        for i, mf in enumerate(mounted):
            host = self.state_dir / "files" / str(i)
            host.write_bytes(mf.data)
            file_map.append([mf.path, str(host)])
        if resolv_conf is not None and not any(m.path == "/etc/resolv.conf" for m in mounted):
            file_map.append(["/etc/resolv.conf", resolv_conf])
        return file_map

    def save(self) -> None:
        """Save the record: a line appended to ``record.jsonl`` (see sandboxd.record_log)."""
        data = {
            "sandbox_id": self.sandbox_id,
            "egress": self.egress.value,
            "cidrs": list(self.cidrs),
            "ingress": self.ingress.value if self.ingress else None,
            "exposed_ports": list(self.exposed_ports),
            "cgroup": {"version": self.cgroup.version, "dirs": self.cgroup.dirs}
            if self.cgroup
            else None,
            "lease": json.loads(self.lease.to_json()) if self.lease else None,
            "agent_pid": self.agent_pid,
            "agent_start_time": self.agent_start_time,
            "keeper_pid": self.keeper_pid,
            "keeper_start_time": self.keeper_start_time,
            "ids": [self.ids.slot, self.ids.first, self.ids.count] if self.ids else None,
            "ports": [vars(p) for p in self.ports],
            "started": self.started,
            "image_rootfs": self.image_rootfs,
        }
        append_record(self.state_dir / RECORD, data)

    @classmethod
    def load(cls, state_dir: Path) -> SandboxRecord:
        """Read the record of a state directory (``record.json`` as older versions wrote it)."""
        try:
            data = read_record(state_dir / RECORD)
        except FileNotFoundError:
            data = read_record(state_dir / LEGACY_RECORD)  # one JSON line: read alike
        cg = data.get("cgroup")
        lease = data.get("lease")
        ids = data.get("ids")
        return cls(
            sandbox_id=data["sandbox_id"],
            state_dir=state_dir,
            egress=EgressType(data["egress"]),
            cidrs=tuple(data["cidrs"]),
            ingress=IngressMode(data["ingress"]) if data["ingress"] else None,
            exposed_ports=tuple(data["exposed_ports"]),
            cgroup=SandboxCgroup(cg["version"], cg["dirs"]) if cg else None,
            lease=Lease(**lease) if lease else None,
            agent_pid=data["agent_pid"],
            agent_start_time=data["agent_start_time"],
            # before keepers existed, the agent itself wrote exit.json: it is its own keeper
            keeper_pid=data.get("keeper_pid", data["agent_pid"]),
            keeper_start_time=data.get("keeper_start_time", data["agent_start_time"]),
            ids=IdRange(*ids) if ids else None,
            ports=[PublishedPort(**p) for p in data["ports"]],
            started=data["started"],
            image_rootfs=data.get("image_rootfs", ""),
        )

    def close_fds(self) -> None:
        """Release runtime descriptors (the sandbox itself is untouched)."""
        loop_fds = [fd for fd in (self.pidfd, self.agent_pidfd, self.dir_fd) if fd is not None]
        if self.pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.pidfd)
        for fd in loop_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pidfd = self.agent_pidfd = self.dir_fd = None


def _readable(fd: int) -> bool:
    """Whether a pidfd says its process has exited, without waiting.

    ``poll``, not ``select``: a runner holds two pidfds per sandbox, and ``select`` refuses
    descriptors from 1,024 up (FD_SETSIZE), which a runner with ~500 sandboxes reaches.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _alive(pid: int | None, start_time: int | None) -> bool:
    if pid is None:
        return False
    start = process_start_time(pid)
    if start is None or start != start_time:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _pidfd(pid: int | None, start_time: int | None) -> int | None:
    """A pidfd for ``pid`` if it is still the process that started at ``start_time``."""
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if process_start_time(pid) != start_time:
        os.close(fd)
        return None
    return fd


def sandboxes_using(sandboxes_dirs: list[Path], rootfs: Path) -> list[str]:
    """Ids of live sandboxes (their keeper still runs) built on the image at ``rootfs``.

    Why from the records on disk: ``sandboxd images rm`` runs as its own process, beside a
    runner that may hold hundreds of sandboxes; the records name each one's image, and the
    keeper's pid and start time say whether it still lives. Deleting an image under a live
    overlay would break the sandbox's view of its files.
    """
    wanted = str(rootfs.absolute())
    found: list[str] = []
    for directory in sandboxes_dirs:
        if not directory.is_dir():
            continue
        for state_dir in sorted(directory.iterdir()):
            try:
                rec = SandboxRecord.load(state_dir)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if rec.image_rootfs == wanted and rec.agent_alive():
                found.append(rec.sandbox_id)
    return found
