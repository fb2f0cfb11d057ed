"""Booting a sandbox's PID 1: shed host descriptors, build, become its root, lock down.

After that it serves as the agent (``agent.py``).

Why in this order:

1. **Descriptors first.** The agent is a fork of its keeper, which holds host objects (the
   state directory, ``main.log``, the runner's connection). Everything not on the agent's
   explicit list is closed before anything else happens, and stdout/stderr are pointed at
   the keeper's diagnostics pipe, so no process in the sandbox can ever reach a host
   object through ``/proc/self/fd`` (the way the first review climbed to the host's ``/``).
2. **Privileged setup as real root**: network, mount, UTS and IPC namespaces, the
   idmapped overlay on the sandbox's own disk, ``/proc``, ``/dev``, ``/sys``, mounted
   files, hostname. No user code runs yet, and every path from an image or a user is
   resolved in root.
3. **Cgroups** are joined by the keeper while we build (a move waits for an RCU grace
   period); then the cgroup namespace is created, rooted at the sandbox's cgroup.
4. **Identity**: enter the sandbox's user namespace as its root — from here on the process
   is an unprivileged host uid — then drop every capability, lock the securebits, set
   no-new-privileges, make the process undumpable (its ``/proc`` entries unreadable to the
   sandbox), arm the parent-death signal (the sandbox dies with its keeper) and load the
   seccomp filter.
5. **The main process**, when the spawn request says ``start`` (a create that starts at
   once): it is started before the agent reports ready, so the runner needs no second
   request, and a start that fails is reported with the readiness (``ok``, a newline,
   then why). The ready pipe is the agent's alone (close-on-exec, and the agent is
   undumpable), so nothing the main process does can write to it.

Standard library only (runs in the agent).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import protocol, rootfs, seccomp, syscalls, userns
from .agent import Agent
from .resolve import Root

SETUP_TIMEOUT = 20.0
READY_MESSAGE_LIMIT = 4000
"""Bytes of a set-up or start failure the agent reports (one read of the ready pipe)."""


@dataclass
class AgentFds:
    """The only descriptors an agent keeps from its keeper; everything else is closed."""

    listener: int
    stdout_w: int
    stderr_w: int
    status_w: int
    diag_w: int
    ready_w: int
    joined_r: int
    userns: int
    disk: int  # the writable layer, a detached mount (disk.py); closed once attached
    netns: int | None = None  # the runner's network (a namespace with a veth, by descriptor)
    empty_netns: int | None = None  # else a fresh one the zygote made ahead (only lo)
    files: list[tuple[str, int]] = field(default_factory=list)
    scratch: int | None = None  # a scratch file system (scratch.py); closed once attached
    volumes: list[int] = field(default_factory=list)  # detached binds (volumes.py), in order

    def keep(self) -> set[int]:
        """Every descriptor on the list."""
        fds = {
            self.listener,
            self.stdout_w,
            self.stderr_w,
            self.status_w,
            self.diag_w,
            self.ready_w,
            self.joined_r,
            self.userns,
            self.disk,
        }
        if self.netns is not None:
            fds.add(self.netns)
        if self.empty_netns is not None:
            fds.add(self.empty_netns)
        if self.scratch is not None:
            fds.add(self.scratch)
        fds.update(self.volumes)
        fds.update(fd for _path, fd in self.files)
        return fds


def close_fds_except(keep: set[int]) -> None:
    """Close every open descriptor not in ``keep`` (0, 1 and 2 included)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _wait_byte(fd: int, timeout: float) -> bytes:
    poller = select.poll()  # not select(): it refuses descriptors from 1,024 up
    poller.register(fd, select.POLLIN)
    return os.read(fd, 4096) if poller.poll(timeout * 1000) else b"timed out"


def _shed_host_descriptors(fds: AgentFds) -> None:
    close_fds_except(fds.keep())
    for target in (1, 2):
        os.dup2(fds.diag_w, target)  # tracebacks go to the keeper, not to a host file
    if fds.diag_w > 2:
        os.close(fds.diag_w)
        fds.diag_w = 2


def _namespaces(req: dict[str, Any], fds: AgentFds) -> None:
    flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
    if fds.netns is not None:
        syscalls.setns(fds.netns, syscalls.CLONE_NEWNET)
        os.close(fds.netns)
        fds.netns = None
        # Nothing to write here: the runner switched IPv6 off in it before its links came
        # up (network_namespace.py). Such a write takes the kernel's network lock, which a
        # burst of creates keeps busy, and waits for it by retrying: a third of a burst's
        # agents' CPU went there.
    elif fds.empty_netns is not None:  # as if unshared here, a millisecond earlier
        syscalls.setns(fds.empty_netns, syscalls.CLONE_NEWNET)
        os.close(fds.empty_netns)
        fds.empty_netns = None
    else:
        flags |= syscalls.CLONE_NEWNET
    syscalls.unshare(flags)
    syscalls.set_link_up("lo")  # up already in a namespace made ahead: then only read


def _lock_down(req: dict[str, Any], fds: AgentFds) -> None:
    userns.enter_userns(fds.userns)
    syscalls.drop_all_capabilities()
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    # getppid() is 0 for a PID namespace's init; the keeper's end of our status pipe tells
    # instead: if it is closed, the keeper died before the death signal was armed.
    poller = select.poll()
    poller.register(fds.status_w, select.POLLOUT)
    if any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0)):
        raise OSError("the keeper exited during setup")
    if req.get("seccomp", True):
        seccomp.install()


def _scratch(req: dict[str, Any], fds: AgentFds) -> tuple[str, int] | None:
    if fds.scratch is None:
        return None
    return str(req["scratch"]["mount_path"]), fds.scratch


def _volumes(req: dict[str, Any], fds: AgentFds) -> tuple[tuple[str, int, bool], ...]:
    wanted = req.get("volumes") or []
    return tuple(
        (str(v["mount_path"]), fd, bool(v["read_only"]))
        for v, fd in zip(wanted, fds.volumes, strict=True)
    )


def _await_join(fds: AgentFds, owner: int, *, late_files: bool) -> None:
    """Wait for the keeper's word that we are in the sandbox's cgroups.

    An agent forked ahead (``spares.py``) hears it on a socket, together with the mounted
    files, which its keeper copied only once claimed: they are placed here, in root, as
    :func:`rootfs.build` places them for a forked agent.
    """
    if not late_files:
        joined = _wait_byte(fds.joined_r, SETUP_TIMEOUT)
        os.close(fds.joined_r)
    else:
        with socket.socket(fileno=fds.joined_r) as chan:
            chan.settimeout(SETUP_TIMEOUT)
            msg, named = protocol.recv_named(chan)
        if msg is None:
            raise OSError("the keeper exited during setup")
        joined = str(msg.get("joined", "")).encode()
        paths = msg.get("files") or []
        files = [(str(path), named[f"file{i}"]) for i, path in enumerate(paths)]
        if joined == b"ok" and files:
            with Root("/") as root:
                rootfs.place_files(root, files, owner)
    if joined != b"ok":
        raise OSError(f"joining the sandbox cgroups failed: {joined.decode(errors='replace')}")


def agent_main(req: dict[str, Any], fds: AgentFds, *, late_files: bool = False) -> NoReturn:
    """PID 1 of the new PID namespace: shed, build, join, become, lock down, then serve.

    ``late_files``: this agent was forked ahead and hears of its mounted files from its
    keeper after the build (:func:`_await_join`).
    """
    try:
        _shed_host_descriptors(fds)
        syscalls.set_process_name("sandboxd-init")
        syscalls.set_cmdline("sandboxd-init")
        _namespaces(req, fds)
        owner = int(req["uid_first"])
        rootfs.build(
            mount_dir=req["mount_dir"],
            lower=req["rootfs"],
            disk_fd=fds.disk,
            files=fds.files,
            scratch=_scratch(req, fds),
            volumes=_volumes(req, fds),
            hostname=req["hostname"],
            userns_fd=fds.userns,
            owner=owner,
        )
        fds.files = []
        fds.scratch = None
        fds.volumes = []
        null = os.open("/dev/null", os.O_RDWR)  # the sandbox's own, now that it exists
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        _await_join(fds, owner, late_files=late_files)
        syscalls.unshare(syscalls.CLONE_NEWCGROUP)
        _lock_down(req, fds)
        agent = Agent(req, fds.listener, fds.stdout_w, fds.stderr_w, fds.status_w)
        ready = b"ok"
        if req.get("start"):  # the create starts the main process too: no start request
            failed = agent.start_main()
            if failed is not None:
                ready += b"\n" + failed.encode()[:READY_MESSAGE_LIMIT]
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(fds.ready_w, f"{type(exc).__name__}: {exc}".encode()[:READY_MESSAGE_LIMIT])
        os._exit(1)
    os.write(fds.ready_w, ready)
    os.close(fds.ready_w)
    agent.serve_forever()
