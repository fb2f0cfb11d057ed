"""The keeper: a sandbox's host-side half, one small process per sandbox (like conmon).

Why a keeper: the host objects a sandbox needs — its log file, its exit record, its state
directory — must never be held by anything that runs inside it (a descriptor held by PID 1
was enough to climb to the host's ``/``). The keeper is forked by the zygote, never enters
the sandbox, never resolves a path the sandbox chose, and reads only two kinds of input from
it: the main process's output (raw bytes, appended to ``main.log`` as timestamped records
up to the log limit) and one-line JSON status events from the agent (start time, exit code
and reason), which it validates before writing ``exit.json``. It is the agent's parent, so
it also learns for certain when PID 1 is gone (and with it every process of the sandbox);
if the keeper is killed, the agent's parent-death signal ends the sandbox with it.

It also does the privileged preparation the agent must not do from inside: the user
namespace and its id mapping, the agent's listening socket in the state directory, sealed
memfd copies of mounted files, the output pipes, and moving the agent into its cgroups; it
hands the agent the writable layer the runner made (``disk.py``) and keeps no copy.

After set-up the keeper execs ``sandboxd-keeper`` (``native/keeper.c``), a small static
program that does exactly what :class:`KeeperLoop` does, with the same descriptors. Why:
the keeper lives as long as its sandbox, and as a fork of the Python zygote an idle keeper
held ~2.1 MiB of private memory (pages that CPython's reference counting, fork hooks and
allocator copy on write), the biggest single item of an idle sandbox's cost. Measured
alternatives: a minimal forked Python loop still costs ~0.7 MiB (fork hooks and refcounts
alone); a fresh interpreter ~2.7 MiB (its own heap and relocations); one keeper process for
many sandboxes would save as much but a crash of it would end all of them at once (their
agents die with their keeper), against the per-sandbox isolation the keeper exists for. The
native loop costs ~0.1 MiB and keeps one keeper per sandbox. The zygote loads the program
once into a sealed memfd (so a rebuilt or replaced file never changes a running runner's
keepers); when it was not built (``scripts/setup.sh`` builds it) or cannot be executed,
:class:`KeeperLoop` runs instead: same files, same bytes, more memory.

Standard library only (forked from the zygote).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import protocol, syscalls, userns
from .boot import SETUP_TIMEOUT, AgentFds, _wait_byte, agent_main
from .logfile import LogWriter
from .spawn import exit_code_from_status

LOG_FILE = "main.log"
EXIT_FILE = "exit.json"
DIAG_FILE = "agent.log"
DIAG_LIMIT = 1 << 20
KILLED = 137  # PID 1 died without reporting: the kernel killed the whole sandbox
EXIT_REASONS = frozenset({"exited", "stopped", "lifetime", "start_failed"})
STATUS_LINE_LIMIT = 4096
DRAIN_SECONDS = 5.0
NATIVE_KEEPER = Path(__file__).with_name("native") / "sandboxd-keeper"
_MFD_EXEC = 0x10  # Linux 6.3+: say explicitly that this memfd is meant to be executed


def load_native_keeper(path: Path = NATIVE_KEEPER) -> int | None:
    """A sealed, executable memfd copy of ``sandboxd-keeper``; None when it is not built."""
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    mfd = -1
    try:
        for flags in (os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | _MFD_EXEC,
                      os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING):  # fmt: skip
            with contextlib.suppress(OSError):
                mfd = os.memfd_create("sandboxd-keeper", flags)
                break
        if mfd < 0:
            return None
        while chunk := os.read(src, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(mfd, view) :]
        os.fchmod(mfd, 0o555)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, seals)
        return mfd
    except OSError:
        if mfd >= 0:
            os.close(mfd)
        return None
    finally:
        os.close(src)


def _sealed_copy(host_path: str) -> int:
    """A read-only memfd with the content of a file the runner wrote (no host fd crosses)."""
    src = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        mfd = os.memfd_create("sandboxd-file", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        while chunk := os.read(src, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(mfd, view) :]
    finally:
        os.close(src)
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, seals)
    return mfd


def run_keeper(
    req: dict[str, Any],
    reply: socket.socket,
    userns_fd: int | None,
    disk_fd: int | None,
    native_fd: int | None = None,
    *,
    scratch_fd: int | None = None,
    volume_fds: tuple[int, ...] = (),
    empty_netns_fd: int | None = None,
    netns_fd: int | None = None,
) -> NoReturn:
    """Prepare, fork the agent, report to the runner, then keep the sandbox until it ends.

    ``userns_fd`` is the sandbox's user namespace when the zygote made it ahead of time;
    otherwise it is made here. ``disk_fd`` is the writable layer (a detached mount, see
    ``disk.py``); it goes to the agent and the keeper keeps no copy. ``native_fd`` is the
    zygote's sealed copy of ``sandboxd-keeper``, exec'd once set-up is done (unless the
    request says ``native_keeper: false``). ``scratch_fd`` is the scratch file system
    (``scratch.py``), if the request has one; it goes to the agent like the layer, and so
    do ``volume_fds``, the detached binds of its persistent volumes (``volumes.py``).
    ``empty_netns_fd`` is a fresh network namespace the zygote made ahead, for a sandbox
    without a network of the runner's; without one the agent unshares its own.
    ``netns_fd`` is the network the runner made for the sandbox (its egress), when the
    request says it has one (``netns``); it goes to the agent like the layer.
    """
    try:
        if disk_fd is None:
            raise RuntimeError("no writable layer came with the request")
        os.setsid()
        syscalls.set_process_name("sandboxd-keeper")
        state_fd, log_fd = open_state(req)
        files = sealed_files(req)
        listener = protocol.listen(protocol.socket_path(state_fd, "agent.sock")).detach()
        if req.get("netns") and netns_fd is None:
            raise RuntimeError("no network namespace came with the request")
        netns = netns_fd if req.get("netns") else None
        if userns_fd is None:
            first, count = int(req["uid_first"]), int(req["uid_count"])
            userns_fd = userns.create_userns(first, count, native_fd)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        diag_r, diag_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        joined_r, joined_w = os.pipe2(os.O_CLOEXEC)
        fds = AgentFds(
            listener=listener,
            stdout_w=out_w,
            stderr_w=err_w,
            status_w=status_w,
            diag_w=diag_w,
            ready_w=ready_w,
            joined_r=joined_r,
            userns=userns_fd,
            disk=disk_fd,
            scratch=scratch_fd,
            volumes=list(volume_fds),
            netns=netns,
            empty_netns=empty_netns_fd,
            files=files,
        )
        req["keeper_pid"] = os.getpid()
        syscalls.unshare(syscalls.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            agent_main(req, fds)
        for fd in fds.keep():
            os.close(fd)
        with contextlib.suppress(BrokenPipeError):  # the agent failed; its report follows
            os.write(joined_w, join_cgroups(pid, req))
        os.close(joined_w)
    except BaseException as exc:
        report_failure(req, reply, exc)
    keep_sandbox(
        req,
        reply,
        Kept(state_fd, log_fd, pid, ready_r, (out_r, err_r, status_r, diag_r)),
        native_fd,
    )


def open_state(req: dict[str, Any]) -> tuple[int, int]:
    """The sandbox's state directory and its ``main.log``, opened (never through a symlink)."""
    state_fd = os.open(req["state_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    log_fd = os.open(
        LOG_FILE,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
        dir_fd=state_fd,
    )
    return state_fd, log_fd


def sealed_files(req: dict[str, Any]) -> list[tuple[str, int]]:
    """``(path in the sandbox, sealed memfd)`` for every mounted file of the request."""
    return [(str(path), _sealed_copy(str(host))) for path, host in req["files"]]


def join_cgroups(pid: int, req: dict[str, Any]) -> bytes:
    """Move the agent into the sandbox's cgroups: ``b"ok"`` or why not (for the agent)."""
    try:
        for procs in req["cgroup_procs"]:
            with open(procs, "w") as fh:
                fh.write(str(pid))
    except OSError as exc:
        return f"{exc}".encode()
    return b"ok"


def report_failure(req: dict[str, Any], reply: socket.socket, exc: BaseException) -> NoReturn:
    """Tell the runner why the sandbox could not be made, and end this keeper."""
    text = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        protocol.send(reply, {"req": req.get("req"), "ok": False, "error": text})
    os._exit(1)


@dataclass
class Kept:
    """What a keeper holds once its agent is on its way: its files and its ends of pipes."""

    state_fd: int
    log_fd: int
    agent_pid: int
    ready_r: int
    outputs: tuple[int, int, int, int]  # stdout, stderr, status, diagnostics


def keep_sandbox(
    req: dict[str, Any], reply: socket.socket, kept: Kept, native_fd: int | None
) -> NoReturn:
    """Wait for the agent's readiness, answer the runner, then keep the sandbox to its end.

    Once set up, the keeper becomes ``sandboxd-keeper`` (``native_fd``) unless the
    request says ``native_keeper: false`` or the program cannot run; :class:`KeeperLoop`
    then does the same work in Python.
    """
    pid = kept.agent_pid
    result: dict[str, Any] = {"req": req.get("req")}
    try:
        status = _wait_byte(kept.ready_r, SETUP_TIMEOUT).decode(errors="replace")
        os.close(kept.ready_r)
        ready, _, start_failed = status.partition("\n")
        if ready != "ok":
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            raise RuntimeError(status or "agent died during setup")
        result.update(ok=True, pid=pid, keeper_pid=os.getpid())
        if start_failed:  # set up, but the main process (asked to start at once) did not
            result["start_error"] = start_failed
    except BaseException as exc:
        report_failure(req, reply, exc)
    with contextlib.suppress(OSError):
        protocol.send(reply, result)
    reply.close()
    limit = int(req.get("log_limit", 64 << 20))
    out_r, err_r, status_r, diag_r = kept.outputs
    if native_fd is not None and req.get("native_keeper", True):
        _exec_native(native_fd, kept.state_fd, kept.log_fd, pid, kept.outputs, limit)
    keeper = KeeperLoop(
        kept.state_fd,
        LogWriter(kept.log_fd, limit),
        pid,
        {out_r: "stdout", err_r: "stderr"},
        status_r,
        diag_r,
    )
    try:
        keeper.run()
    finally:
        keeper.write_exit()
    os._exit(0)


def _exec_native(  # noqa: PLR0917 - each argument a distinct descriptor
    native_fd: int,
    state_fd: int,
    log_fd: int,
    agent_pid: int,
    outputs: tuple[int, int, int, int],
    log_limit: int,
) -> None:
    """Become ``sandboxd-keeper`` with exactly these descriptors; returns only on failure.

    Every other descriptor of the keeper is close-on-exec (the zygote closed what it
    inherited), so the program starts with nothing more than its arguments name.
    """
    fds = (state_fd, log_fd, *outputs)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        argv = ["sandboxd-keeper", str(state_fd), str(log_fd), str(agent_pid)]
        argv += [*(str(fd) for fd in outputs), str(log_limit)]
        os.execve(native_fd, argv, {})
    except OSError:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


class KeeperLoop:
    """Copies output into the log, collects status events, and records the exit."""

    def __init__(  # noqa: PLR0917 - one call site, each argument a distinct descriptor
        self,
        state_fd: int,
        log: LogWriter,
        agent_pid: int,
        outputs: dict[int, str],
        status_fd: int,
        diag_fd: int,
    ) -> None:
        self.state_fd = state_fd
        self.log = log
        self.agent_pid = agent_pid
        self.outputs = dict(outputs)
        self.status_fd = status_fd
        self.diag_fd = diag_fd
        self.diag_written = 0
        self.status_buf = b""
        self.started_at: float | None = None
        self.exit: tuple[int, str] | None = None
        self.agent_status: int | None = None
        self.sel = selectors.EpollSelector()
        self.pidfd = os.pidfd_open(agent_pid)
        for fd in (*self.outputs, status_fd, diag_fd):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        self.sel.register(self.pidfd, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until PID 1 is gone and every pipe is drained (or the drain timed out)."""
        drain_deadline: float | None = None
        while True:
            open_fds = [k.fd for k in self.sel.get_map().values() if k.fd != self.pidfd]
            if self.agent_status is not None and not open_fds:
                return
            timeout = None
            if drain_deadline is not None:
                timeout = drain_deadline - time.monotonic()
                if timeout <= 0:
                    return
            for key, _ in self.sel.select(timeout):
                if key.fd == self.pidfd:
                    self._reap()
                    drain_deadline = time.monotonic() + DRAIN_SECONDS
                else:
                    self._read(key.fd)

    def _reap(self) -> None:
        self.sel.unregister(self.pidfd)
        with contextlib.suppress(ChildProcessError):
            _pid, status = os.waitpid(self.agent_pid, 0)
            self.agent_status = exit_code_from_status(status)
        if self.agent_status is None:
            self.agent_status = KILLED

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            return
        if fd in self.outputs:
            self.log.write(self.outputs[fd], data)
        elif fd == self.status_fd:
            self._on_status(data)
        else:
            self._on_diag(data)

    def _on_status(self, data: bytes) -> None:
        self.status_buf += data
        *lines, self.status_buf = self.status_buf.split(b"\n")
        if len(self.status_buf) > STATUS_LINE_LIMIT:
            self.status_buf = b""  # not a line an honest agent writes: drop it
        for line in lines:
            if len(line) <= STATUS_LINE_LIMIT:
                self._on_status_line(line)

    def _on_status_line(self, line: bytes) -> None:
        """``started <time>`` or ``exit <code> <reason>`` (``status_line`` in the agent)."""
        kind, _, arg = line.partition(b" ")
        with contextlib.suppress(ValueError):
            if kind == b"started":
                at = float(arg)
                if 0.0 <= at < 1e11:  # also refuses nan and inf, as the native keeper does
                    self.started_at = at
            elif kind == b"exit":
                code_raw, _, reason = arg.partition(b" ")
                code = int(code_raw) if code_raw.isdigit() else -1
                text = reason.decode("ascii")
                if 0 <= code <= 255 and text in EXIT_REASONS:
                    self.exit = (code, text)

    def _on_diag(self, data: bytes) -> None:
        if self.diag_written >= DIAG_LIMIT:
            return
        data = data[: DIAG_LIMIT - self.diag_written]
        with contextlib.suppress(OSError):
            self._write(DIAG_FILE, data, os.O_APPEND)
        self.diag_written += len(data)

    def _write(self, name: str, data: bytes, mode: int) -> None:
        """Write ``data`` to a file of the state directory (never through a symlink)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | mode
        fd = os.open(name, flags, 0o600, dir_fd=self.state_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def write_exit(self) -> None:
        """``exit.json``: the agent's report, or 137 "killed" when PID 1 died without one."""
        code, reason = self.exit if self.exit is not None else (KILLED, "killed")
        record = {
            "exit_code": code,
            "reason": reason,
            "started_at": self.started_at,
            "finished_at": time.time(),
        }
        tmp = f"{EXIT_FILE}.tmp"
        with contextlib.suppress(OSError):
            self._write(tmp, json.dumps(record).encode(), os.O_TRUNC)
            os.rename(tmp, EXIT_FILE, src_dir_fd=self.state_fd, dst_dir_fd=self.state_fd)
