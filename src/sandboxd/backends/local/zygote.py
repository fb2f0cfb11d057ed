"""The zygote: a small, single-threaded Python process that forks every sandbox.

Why a zygote: starting a Python interpreter per sandbox costs tens of milliseconds, and
forking the runner itself is unsafe (it is multi-threaded: gRPC, asyncio executors). The
zygote imports everything the agent needs once, then for each request forks a short-lived
child that joins the sandbox's cgroups and network namespace, unshares the other namespaces
and forks the agent, which becomes PID 1 of the new PID namespace. The zygote is started in
its own session and is a child subreaper, so agents are reaped even after the runner that
started it has died; a restarted runner simply reconnects to ``zygote.sock``.

Run as ``python -c 'from sandboxd.backends.local.zygote import main; main()' RUN_DIR FD``.
Standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

from . import protocol, rootfs, seccomp, syscalls
from .agent import Agent

SPAWN_TIMEOUT = 20.0


def _close_fds_except(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as fh:
        fh.write(value)


class Setup:
    """What the intermediate child prepared for the agent (all fds close-on-exec)."""

    def __init__(self, req: dict[str, Any], state_fd: int) -> None:
        state = req["state_dir"]
        self.req = req
        self.state_fd = state_fd
        self.log_fd = os.open(
            os.path.join(state, "main.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        self.files = [
            (path, os.open(host, os.O_RDONLY | os.O_CLOEXEC)) for path, host in req["files"]
        ]
        self.listener = protocol.listen(protocol.socket_path(state_fd, "agent.sock"))
        self.netns_fd = (
            os.open(req["netns"], os.O_RDONLY | os.O_CLOEXEC) if req.get("netns") else None
        )


def _wait_byte(fd: int, timeout: float) -> bytes:
    ok, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 4096) if ok else b"timed out"


def agent_main(setup: Setup, joined_r: int, ready_w: int) -> None:
    """PID 1 of the new PID namespace: namespaces, root, lock down, then serve.

    The intermediate child moves this process into the sandbox's cgroups *while* it builds
    the root (a cgroup move waits for an RCU grace period, the setup is CPU work), and
    signals ``joined_r``; only then is the cgroup namespace created (rooted at the sandbox's
    cgroup) and are capabilities dropped. No user code runs before ``ready``.
    """
    req = setup.req
    try:
        syscalls.set_process_name("sandboxd-init")
        syscalls.set_cmdline("sandboxd-init")
        _write_sysctl("/proc/self/oom_score_adj", "-1000")
        flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
        if setup.netns_fd is not None:
            syscalls.setns(setup.netns_fd, syscalls.CLONE_NEWNET)
            os.close(setup.netns_fd)
            for key in ("all", "default"):
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "1")
        else:
            flags |= syscalls.CLONE_NEWNET
        syscalls.unshare(flags)
        syscalls.set_link_up("lo")
        rootfs.build(
            lower=req["rootfs"],
            rw_dir=req["rw_dir"],
            root_dir=req["root_dir"],
            disk_bytes=int(req["disk_bytes"]),
            files=setup.files,
            hostname=req["hostname"],
        )
        joined = _wait_byte(joined_r, SPAWN_TIMEOUT)
        if joined != b"ok":
            raise OSError(f"joining the sandbox cgroups failed: {joined.decode(errors='replace')}")
        os.close(joined_r)
        syscalls.unshare(syscalls.CLONE_NEWCGROUP)
        syscalls.drop_all_capabilities()
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
        if req.get("seccomp", True):
            seccomp.install()
        agent = Agent(req, setup.listener, setup.log_fd, setup.state_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(ready_w, f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)
    os.write(ready_w, b"ok")
    os.close(ready_w)
    try:
        agent.run()
    except BaseException:
        traceback.print_exc()
    os._exit(0)


def _join_cgroups(pid: int, procs_files: list[str]) -> bytes:
    try:
        for procs in procs_files:
            with open(procs, "w") as fh:
                fh.write(str(pid))
    except OSError as exc:
        return f"{exc}".encode()
    return b"ok"


def _spawn_child(req: dict[str, Any], reply: socket.socket) -> None:
    """The intermediate child: fork the agent, place it in the cgroups, report, exit.

    The agent is forked into a new PID namespace (so it is PID 1 there); this process
    moves it into the sandbox's cgroups, waits until it is ready and sends the reply.
    """
    result: dict[str, Any] = {"req": req["req"]}
    try:
        os.setsid()
        state_fd = os.open(req["state_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        setup = Setup(req, state_fd)
        syscalls.unshare(syscalls.CLONE_NEWPID)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        joined_r, joined_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(joined_w)
            reply.close()
            agent_main(setup, joined_r, ready_w)
        os.close(ready_w)
        os.close(joined_r)
        os.write(joined_w, _join_cgroups(pid, req["cgroup_procs"]))
        status = _wait_byte(ready_r, SPAWN_TIMEOUT).decode(errors="replace")
        if status == "ok":
            result.update(ok=True, pid=pid)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            result.update(ok=False, error=status or "agent died during setup")
    except BaseException as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        protocol.send(reply, result)
    os._exit(0)


class Zygote:
    """Accepts runner connections; forks one child per spawn request; reaps everything."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.listener = protocol.listen(protocol.socket_path(self.run_dir_fd, "zygote.sock"))
        self.sel = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, lambda *_: None)  # not SIG_IGN: it would be inherited
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._reap)
        self.running = True

    def _accept(self, _obj: Any) -> None:
        conn, _ = self.listener.accept()
        self.sel.register(conn, selectors.EVENT_READ, self._on_message)

    def _reap(self, _obj: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _on_message(self, conn: socket.socket) -> None:
        try:
            msg, fds = protocol.recv(conn)
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            self.sel.unregister(conn)
            conn.close()
            return
        op = msg.get("op")
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _close_fds_except({conn.fileno(), 0, 1, 2})
                _spawn_child(msg, conn)
        elif op == "ping":
            with contextlib.suppress(OSError):
                protocol.send(conn, {"ok": True, "pid": os.getpid()})
        elif op == "shutdown":
            with contextlib.suppress(OSError):
                protocol.send(conn, {"ok": True})
            self.running = False

    def serve(self, ready_fd: int | None) -> None:
        """Signal readiness on ``ready_fd`` and loop until asked to shut down."""
        if ready_fd is not None:
            os.write(ready_fd, b"ok")
            os.close(ready_fd)
        while self.running:
            for key, _mask in self.sel.select():
                key.data(key.fileobj)


def main() -> None:
    """Entry point: ``RUN_DIR [READY_FD]``."""
    syscalls.set_process_name("sandboxd-zygote")
    syscalls.set_cmdline(f"sandboxd-zygote {sys.argv[1]}")
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    run_dir = sys.argv[1]
    ready_fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
    zygote = Zygote(run_dir)
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) inherited pages
    zygote.serve(ready_fd)


if __name__ == "__main__":
    main()
