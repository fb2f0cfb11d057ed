"""The agent: PID 1 of every sandbox, a forked copy of the zygote living inside the sandbox.

Why an agent rather than ``nsenter`` per exec: joining five namespaces and a cgroup and
dropping capabilities costs one program execution (plus a fork for the PID namespace) on
*every* exec, and ``nsenter`` cannot drop capabilities at all. The agent is already inside
every namespace and the cgroup with capabilities dropped and the seccomp filter loaded, so an
exec is one ``vfork``+``execve`` of the user's program. As PID 1 it also reaps orphans,
writes the main process's output to the log with timestamps, enforces the stop grace period
and the lifetime, and records the exit code (128+N for signal N) in ``exit.json`` before it
exits; when PID 1 exits the kernel kills everything left in the sandbox.

The agent cannot import anything once it has pivoted into the image, so this module and its
helpers use only modules the zygote imported beforehand. Single-threaded, one epoll loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from . import fileops, protocol
from .logfile import LogWriter
from .spawn import acquire_ctty, exit_code_from_status, relax_oom, set_winsize, spawn_fast

_TTY_DEFAULT = (80, 24)


class Agent:
    """The event loop; ``cfg`` is the spawn request the runner sent through the zygote."""

    def __init__(
        self, cfg: dict[str, Any], listener: socket.socket, log_fd: int, state_fd: int
    ) -> None:
        self.cfg = cfg
        self.env: dict[str, str] = dict(cfg["env"])
        self.listener = listener
        self.state_fd = state_fd
        self.log = LogWriter(log_fd, int(cfg.get("log_limit", 64 << 20)))
        self.sel = selectors.EpollSelector()
        self.children: dict[int, Callable[[int], None]] = {}
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        self.main_pid: int | None = None
        self.main_pipes: dict[int, str] = {}
        self.started_at: float | None = None
        self.stop_deadline: float | None = None
        self.stop_reason = "stopped"
        self.lifetime_deadline: float | None = None
        self.finished = False
        self._stopping = False
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # A no-op handler, not SIG_IGN: ignored dispositions survive execve and the main
        # process must see SIGTERM on stop. Handlers are reset to default in children.
        for sig in signal.valid_signals():
            if sig != signal.SIGPIPE and signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, lambda *_: None)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the main process is gone (or the sandbox was stopped)."""
        while not self.finished:
            deadlines = [d for d in (self.stop_deadline, self.lifetime_deadline) if d]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _mask in self.sel.select(timeout):
                key.data(key.fileobj)
            now = time.monotonic()
            if self.lifetime_deadline and now >= self.lifetime_deadline:
                self.lifetime_deadline = None
                self.stop(float(self.cfg.get("lifetime_grace", 5.0)), "lifetime")
            if self.stop_deadline and now >= self.stop_deadline:
                self.stop_deadline = None
                with contextlib.suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
        self._finish()

    def _on_wakeup(self, _fd: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            popen = self.popens.pop(pid, None)
            code = exit_code_from_status(status)
            if popen is not None:
                popen.returncode = code  # so Popen never waits for this pid itself
            handler = self.children.pop(pid, None)
            if handler is not None:
                handler(code)

    def _accept(self, _sock: Any) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.sel.register(conn, selectors.EVENT_READ, self._on_request)

    def _close(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _on_request(self, conn: socket.socket) -> None:
        try:
            msg, fds = protocol.recv(conn)
        except OSError:
            msg, fds = None, []
        if msg is None:
            self._close(conn)
            return
        op = msg.get("op")
        try:
            if op == "exec":
                self._exec(conn, msg, fds)
            elif op in ("read_file", "write_file"):
                self._file_op(conn, msg, fds)
            elif op == "start":
                self._start(conn)
            elif op == "stop":
                self.stop(float(msg.get("grace", 10.0)), "stopped")
                protocol.send(conn, {"ok": True})
            elif op == "ping":
                state = "running" if self.main_pid else "created"
                protocol.send(conn, {"ok": True, "state": state})
            else:
                protocol.send(conn, {"error": {"kind": "protocol", "message": f"bad op {op}"}})
        except OSError as exc:
            with contextlib.suppress(OSError):
                protocol.send(conn, {"error": {"kind": "io", "message": str(exc)}})
        finally:
            for fd in fds:
                os.close(fd)

    # -- processes ------------------------------------------------------------------------
    def _spawn(
        self,
        argv: list[str],
        stdio: tuple[int, int, int],
        env: dict[str, str],
        cwd: str,
        tty: bool = False,
    ) -> int:
        if tty:  # needs TIOCSCTTY in the child, which posix_spawn cannot do
            popen = subprocess.Popen(
                argv,
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=acquire_ctty,  # noqa: PLW1509 - the agent is single-threaded
            )
            self.popens[popen.pid] = popen
            pid = popen.pid
        else:
            pid = spawn_fast(argv, stdio, env, cwd)
        relax_oom(pid)
        return pid

    @staticmethod
    def _spawn_error(exc: OSError, argv: list[str], cwd: str) -> tuple[int, bytes]:
        missing_cwd = exc.filename == cwd and not os.path.isdir(cwd)
        what = f"cwd {cwd}" if missing_cwd else argv[0]
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return code, f"sandboxd: exec {what}: {exc.strerror}\n".encode()

    def _start(self, conn: socket.socket) -> None:
        if self.main_pid is not None or self.finished:
            protocol.send(conn, {"error": {"kind": "state", "message": "already started"}})
            return
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        argv, cwd = list(self.cfg["command"]), self.cfg["workdir"]
        self.started_at = time.time()
        try:
            pid = self._spawn(argv, (devnull, out_w, err_w), self.env, cwd)
        except OSError as exc:
            os.close(out_r)
            os.close(err_r)
            code, text = self._spawn_error(exc, argv, cwd)
            self.log.write("stderr", text)
            protocol.send(conn, {"error": {"kind": "exec", "message": text.decode().strip()}})
            self._record_exit(code, "start_failed")
            return
        finally:
            for fd in (out_w, err_w, devnull):
                os.close(fd)
        self.main_pid = pid
        lifetime = self.cfg.get("max_lifetime")
        if lifetime:
            self.lifetime_deadline = time.monotonic() + float(lifetime)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.main_pipes[fd] = stream
            self.sel.register(fd, selectors.EVENT_READ, self._on_main_output)
        self.children[pid] = self._on_main_exit
        protocol.send(conn, {"ok": True, "pid": pid})

    def _on_main_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            self.log.write(self.main_pipes[fd], data)
            return
        self.sel.unregister(fd)
        os.close(fd)
        del self.main_pipes[fd]

    def _on_main_exit(self, code: int) -> None:
        for fd in list(self.main_pipes):
            with contextlib.suppress(OSError):
                while data := os.read(fd, 65536):
                    self.log.write(self.main_pipes[fd], data)
        self._record_exit(code, self.stop_reason if self._stopping else "exited")

    def stop(self, grace: float, reason: str) -> None:
        """SIGTERM the main process, SIGKILL everything after ``grace`` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self.stop_reason = reason
        if self.main_pid is None:
            self._record_exit(143, reason)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.main_pid, signal.SIGTERM)
        self.stop_deadline = time.monotonic() + max(0.0, grace)

    def _record_exit(self, code: int, reason: str) -> None:
        record = {
            "exit_code": code,
            "reason": reason,
            "started_at": self.started_at,
            "finished_at": time.time(),
        }
        tmp = "exit.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=self.state_fd)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.rename(tmp, "exit.json", src_dir_fd=self.state_fd, dst_dir_fd=self.state_fd)
        self.finished = True

    def _finish(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)

    # -- exec ---------------------------------------------------------------------------------
    def _exec(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        argv = list(msg["argv"])
        env = {**self.env, **msg.get("env", {})}
        cwd = msg.get("cwd") or self.cfg["workdir"]
        master = -1
        if msg.get("tty"):
            env.setdefault("TERM", "xterm")
            master, slave = os.openpty()
            cols, rows = msg.get("size") or _TTY_DEFAULT
            set_winsize(slave, cols, rows)
            stdio = (slave, slave, slave)
        else:
            if len(fds) != 3:
                raise OSError(errno.EINVAL, "exec needs three pipe fds")
            stdio = (fds[0], fds[1], fds[2])
        try:
            pid = self._spawn(argv, stdio, env, cwd, tty=bool(msg.get("tty")))
        except OSError as exc:
            code, text = self._spawn_error(exc, argv, cwd)
            with contextlib.suppress(OSError):
                os.write(stdio[2], text)
            protocol.send(conn, {"started": False, "exit": code}, [master] if master >= 0 else [])
            self._close(conn)
            return
        finally:
            if master >= 0:
                os.close(stdio[0])
        protocol.send(conn, {"started": True, "pid": pid}, [master] if master >= 0 else [])
        if master >= 0:
            os.close(master)

        def on_exit(code: int) -> None:
            with contextlib.suppress(OSError):
                protocol.send(conn, {"exit": code})
            self._close(conn)

        def on_control(sock: socket.socket) -> None:
            try:
                ctl, extra = protocol.recv(sock)
            except OSError:
                ctl, extra = None, []
            for fd in extra:
                os.close(fd)
            sig = signal.SIGKILL if ctl is None else int(ctl.get("signal", signal.SIGKILL))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if ctl is None:  # runner went away: the session is over
                self.sel.unregister(sock)

        self.children[pid] = on_exit
        self.sel.modify(conn, selectors.EVENT_READ, on_control)

    def _file_op(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        if len(fds) != 1:
            raise OSError(errno.EINVAL, "file ops need one pipe fd")
        pid = os.fork()
        if pid == 0:  # worker: blocking, short-lived, then _exit
            code = 0
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                relax_oom(os.getpid())
                if msg["op"] == "read_file":
                    fileops.read_file(conn, msg, fds[0])
                else:
                    fileops.write_file(conn, msg, fds[0])
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = lambda _code: None
        self._close(conn)
