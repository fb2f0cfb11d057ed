"""The agent: PID 1 of every sandbox, a forked copy of its keeper living inside the sandbox.

Why an agent rather than ``nsenter`` per exec: joining five namespaces and a cgroup and
dropping capabilities costs one program execution (plus a fork for the PID namespace) on
*every* exec, and ``nsenter`` cannot drop capabilities at all. The agent is already inside
every namespace, the user namespace and the cgroup, with capabilities dropped and the
seccomp filter loaded, so an exec is one ``vfork``+``execve`` of the user's program. As
PID 1 it also reaps orphans, starts the main process on the output pipes its keeper reads,
enforces the stop grace period and the lifetime, and reports the main process's start and
exit code (128+N for signal N) to the keeper, which records them on the host; when PID 1
exits the kernel kills everything left in the sandbox. The default main command, a shell
that only waits to be stopped, is not run: the agent stays up in its place and reports exit
code 0 when the sandbox is stopped, as that shell would (``keep_alive.py``).

The agent holds no host descriptor and resolves every path in root (``resolve.py``); it
treats every request as hostile: a malformed, oversized or unknown message gets an error
reply, any failure while handling one (even ``MemoryError`` under the sandbox's own memory
pressure, or ``EAGAIN`` when a fork bomb took every PID) costs that request only, and the
number of concurrent execs is capped. The OOM killer picks its children first
(``spawn.expose_to_oom``).

The agent cannot import anything once it has pivoted into the image, so this module and its
helpers use only modules the zygote imported beforehand. Single-threaded, one epoll loop.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import selectors
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from ..keep_alive import keeps_alive
from . import fileops, protocol
from .resolve import Root, find_executable
from .spawn import (
    DEFAULT_PATH,
    acquire_ctty,
    exit_code_from_status,
    expose_to_oom,
    set_winsize,
    spawn_fast,
)

_TTY_DEFAULT = (80, 24)
MAX_EXECS = 1024  # concurrent exec sessions per sandbox (the runner caps lower, per policy)
MAX_CONNECTIONS = 2048  # open request connections of any kind
EXEC_REFUSED = 126


@functools.cache
def ignored_signals() -> frozenset[int]:
    """The signals whose disposition was SIG_IGN when this process family started.

    Why cached: ignored dispositions survive ``execve``, so the agent resets them before it
    starts anything; scanning all 64 signals through ``signal.getsignal`` costs about 0.4
    ms in a freshly forked agent, on every create's path. The zygote calls this once before
    it installs handlers of its own, and nothing between it and an agent sets SIG_IGN, so
    its forks only look at what it found (usually SIGXFSZ, or SIGHUP under ``nohup``).
    """
    return frozenset(
        sig for sig in signal.valid_signals() if signal.getsignal(sig) == signal.SIG_IGN
    )


class BadRequest(ValueError):
    """A request with missing or mistyped fields."""


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    return value


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f"{name} must map strings to strings")
    return value


def _has_nul(values: list[str]) -> bool:
    return any("\0" in v for v in values)


class Agent:
    """The event loop; ``cfg`` is the spawn request the runner sent through the zygote."""

    def __init__(
        self,
        cfg: dict[str, Any],
        listener: socket.socket | int,
        stdout_w: int,
        stderr_w: int,
        status_w: int,
    ) -> None:
        self.cfg = cfg
        self.env: dict[str, str] = dict(cfg["env"])
        if isinstance(listener, int):
            listener = socket.socket(fileno=listener)
        self.listener = listener
        self.main_out: tuple[int, int] | None = (stdout_w, stderr_w)
        self.status_w = status_w
        self.root = Root("/")
        self.sel = selectors.EpollSelector()
        self.children: dict[int, Callable[[int], None]] = {}
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        self.conns: set[socket.socket] = set()
        self.execs = 0
        self.main_pid: int | None = None
        #: The main command is the default keep-alive, which the agent carries out itself:
        #: no process, and exit code 0 once stopped (``keep_alive.py``).
        self.kept_alive = False
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
        for sig in ignored_signals():  # SIGPIPE: see spawn_fast, which resets it per child
            if sig != signal.SIGPIPE and signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, lambda *_: None)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)

    # -- loop ---------------------------------------------------------------------------
    def serve_forever(self) -> NoReturn:
        """Serve until the main process is gone (or the sandbox was stopped), then exit."""
        while not self.finished:
            try:
                self._turn()
            except Exception:  # never fatal: report to the keeper's diagnostics and go on
                with contextlib.suppress(Exception):
                    traceback.print_exc()
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        os._exit(0)

    def _turn(self) -> None:
        deadlines = [d for d in (self.stop_deadline, self.lifetime_deadline) if d]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for key, _mask in self.sel.select(timeout):
            try:
                key.data(key.fileobj)
            except Exception:
                with contextlib.suppress(Exception):
                    traceback.print_exc()
                if isinstance(key.fileobj, socket.socket) and key.fileobj is not self.listener:
                    self._close(key.fileobj)
        now = time.monotonic()
        if self.lifetime_deadline and now >= self.lifetime_deadline:
            self.lifetime_deadline = None
            self.stop(float(self.cfg.get("lifetime_grace", 5.0)), "lifetime")
        if self.stop_deadline and now >= self.stop_deadline:
            self.stop_deadline = None
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)

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
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EMFILE and friends: refuse this one, keep serving the others
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            conn.close()
            return
        self.conns.add(conn)
        self.sel.register(conn, selectors.EVENT_READ, self._on_request)

    def _close(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        self.conns.discard(conn)
        conn.close()

    @staticmethod
    def _reply(conn: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        with contextlib.suppress(OSError, protocol.ProtocolError):
            protocol.send(conn, msg, fds or [])

    def _on_request(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            msg, fds = protocol.recv(conn)
        except protocol.ProtocolError as exc:
            self._reply(conn, {"error": {"kind": "protocol", "message": str(exc)}})
            self._close(conn)
            return
        except OSError:
            msg = None
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
                self._start(conn, msg)
            elif op == "stop":
                grace = msg.get("grace", 10.0)
                if not isinstance(grace, int | float):
                    raise BadRequest("grace must be a number")
                self.stop(float(grace), "stopped")
                self._reply(conn, {"ok": True})
            elif op == "ping":
                state = "running" if self.main_pid or self.kept_alive else "created"
                self._reply(conn, {"ok": True, "state": state})
            else:
                self._reply(conn, {"error": {"kind": "protocol", "message": f"bad op {op!r}"}})
        except BadRequest as exc:
            self._reply(conn, {"error": {"kind": "protocol", "message": str(exc)}})
            self._close(conn)
        except OSError as exc:
            self._reply(conn, {"error": {"kind": "io", "message": str(exc)}})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- processes ------------------------------------------------------------------------
    def _enter_cwd(self, cwd: str) -> None:
        """``fchdir`` into ``cwd`` resolved in root; children inherit it (single thread)."""
        try:
            fd = self.root.open_dir(cwd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a magic link: refused, not "too many links"
                raise PermissionError(errno.EACCES, "refused: magic link", cwd) from None
            raise
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)

    def _spawn(
        self,
        argv: list[str],
        stdio: tuple[int, int, int],
        env: dict[str, str],
        cwd: str,
        tty: bool = False,
    ) -> int:
        """Resolve ``cwd`` and ``argv[0]`` in root, then start the process in a group of its own.

        A terminal exec gets a session of its own too (its terminal needs one).
        """
        self._enter_cwd(cwd)
        try:
            path = find_executable(self.root, argv[0], env.get("PATH", DEFAULT_PATH), cwd)
            if tty:  # needs TIOCSCTTY in the child, which posix_spawn cannot do
                popen = subprocess.Popen(
                    argv,
                    executable=path,
                    stdin=stdio[0],
                    stdout=stdio[1],
                    stderr=stdio[2],
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=acquire_ctty,  # noqa: PLW1509 - the agent is single-threaded
                )
                self.popens[popen.pid] = popen
                pid = popen.pid
            else:
                pid = spawn_fast(path, argv, stdio, env)
        finally:
            os.chdir("/")
        expose_to_oom(pid)
        return pid

    @staticmethod
    def _spawn_error(exc: OSError, argv: list[str], cwd: str) -> tuple[int, bytes]:
        what = f"cwd {cwd}" if exc.filename == cwd else argv[0]
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return code, f"sandboxd: exec {what}: {exc.strerror}\n".encode()

    def _start_settings(self, msg: dict[str, Any]) -> None:
        """Apply what a warm sandbox learns only when it is claimed (``warm.py``).

        Command, environment, working directory and lifetime may come with ``start``; a
        sandbox created cold got them in its spawn request already and sends none.
        """
        if "command" in msg:
            argv = _str_list(msg["command"], "command")
            if not argv or _has_nul(argv):
                raise BadRequest("command must be non-empty strings without NUL")
            self.cfg["command"] = argv
        if "env" in msg:
            env = _str_map(msg["env"], "env")
            if _has_nul(list(env)) or _has_nul(list(env.values())) or any("=" in k for k in env):
                raise BadRequest("env keys and values must not contain NUL (or '=' in keys)")
            self.env = dict(env)
        if "workdir" in msg:
            workdir = msg["workdir"]
            if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
                raise BadRequest("workdir must be an absolute path")
            self.cfg["workdir"] = workdir
        if "max_lifetime" in msg:
            lifetime = msg["max_lifetime"]
            if lifetime is not None and (not isinstance(lifetime, int | float) or lifetime <= 0):
                raise BadRequest("max_lifetime must be a positive number or null")
            self.cfg["max_lifetime"] = lifetime

    def _start(self, conn: socket.socket, msg: dict[str, Any] | None = None) -> None:
        if self.main_pid is not None or self.finished or self.main_out is None:
            self._reply(conn, {"error": {"kind": "state", "message": "already started"}})
            return
        if msg:
            self._start_settings(msg)
        failed = self.start_main()
        if failed is not None:
            self._reply(conn, {"error": {"kind": "exec", "message": failed}})
            return
        self._reply(conn, {"ok": True, "pid": self.main_pid})

    def start_main(self) -> str | None:
        """Start the main process; None, or why it could not start (its exit is recorded).

        Called for a ``start`` request, or by ``boot.py`` right after set-up when the spawn
        request asked for it (a create that starts at once saves the runner a round trip).
        """
        assert self.main_out is not None, "the main process was started already"
        out_w, err_w = self.main_out
        self.main_out = None
        argv, cwd = list(self.cfg["command"]), self.cfg["workdir"]
        self._status(f"started {time.time():.6f}")
        try:
            if keeps_alive(argv):  # nothing to run: stay up until stopped, then exit 0
                self.kept_alive = True
            else:
                stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.main_pid = self._spawn(argv, (stdin, out_w, err_w), self.env, cwd)
                finally:
                    os.close(stdin)
                self.children[self.main_pid] = self._on_main_exit
        except OSError as exc:
            code, text = self._spawn_error(exc, argv, cwd)
            with contextlib.suppress(OSError):
                os.write(err_w, text)
            self._record_exit(code, "start_failed")
            return text.decode(errors="replace").strip()
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
        lifetime = self.cfg.get("max_lifetime")
        if lifetime:
            self.lifetime_deadline = time.monotonic() + float(lifetime)
        return None

    def _on_main_exit(self, code: int) -> None:
        self._record_exit(code, self.stop_reason if self._stopping else "exited")

    def stop(self, grace: float, reason: str) -> None:
        """SIGTERM the main process, SIGKILL everything after ``grace`` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self.stop_reason = reason
        if self.main_pid is None:  # the keep-alive exits 0 as its shell would; unstarted: 143
            self._record_exit(0 if self.kept_alive else 143, reason)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.main_pid, signal.SIGTERM)
        self.stop_deadline = time.monotonic() + max(0.0, grace)

    def _status(self, line: str) -> None:
        """One status line to the keeper (atomic: well under PIPE_BUF).

        Plain text, ``started <time>`` or ``exit <code> <reason>``, not JSON: the native
        keeper (``native/keeper.c``) accepts exactly these two forms and nothing else.
        """
        with contextlib.suppress(OSError):
            os.write(self.status_w, line.encode() + b"\n")

    def _record_exit(self, code: int, reason: str) -> None:
        self._status(f"exit {code} {reason}")
        self.finished = True

    # -- exec ---------------------------------------------------------------------------------
    def _parse_exec(self, msg: dict[str, Any]) -> tuple[list[str], dict[str, str], str]:
        argv = _str_list(msg.get("argv"), "argv")
        if not argv or _has_nul(argv):
            raise BadRequest("argv must be non-empty strings without NUL")
        env = {**self.env, **_str_map(msg.get("env", {}), "env")}
        if _has_nul(list(env)) or _has_nul(list(env.values())) or any("=" in k for k in env):
            raise BadRequest("env keys and values must not contain NUL (or '=' in keys)")
        cwd = msg.get("cwd") or self.cfg["workdir"]
        if not isinstance(cwd, str) or "\0" in cwd:
            raise BadRequest("cwd must be a string")
        return argv, env, cwd

    def _exec(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        tty = bool(msg.get("tty"))
        try:
            argv, env, cwd = self._parse_exec(msg)
        except BadRequest as exc:
            if not tty and len(fds) == 3:
                with contextlib.suppress(OSError):
                    os.write(fds[2], f"sandboxd: exec refused: {exc}\n".encode())
            self._reply(conn, {"started": False, "exit": EXEC_REFUSED, "error": str(exc)})
            self._close(conn)
            return
        limit = int(self.cfg.get("max_execs") or MAX_EXECS)
        if self.execs >= limit:
            busy = f"sandboxd: too many concurrent execs in this sandbox (limit {limit})\n"
            if not tty and len(fds) == 3:
                with contextlib.suppress(OSError):
                    os.write(fds[2], busy.encode())
            self._reply(conn, {"started": False, "exit": EXEC_REFUSED, "error": busy.strip()})
            self._close(conn)
            return
        master = -1
        if tty:
            env.setdefault("TERM", "xterm")
            master, slave = os.openpty()
            size = msg.get("size") or _TTY_DEFAULT
            try:
                cols, rows = (int(size[0]), int(size[1]))
            except (TypeError, ValueError, IndexError):
                cols, rows = _TTY_DEFAULT
            set_winsize(slave, max(1, min(cols, 10000)), max(1, min(rows, 10000)))
            stdio = (slave, slave, slave)
        else:
            if len(fds) != 3:
                raise BadRequest("exec needs three pipe fds")
            stdio = (fds[0], fds[1], fds[2])
        try:
            pid = self._spawn(argv, stdio, env, cwd, tty=tty)
        except OSError as exc:
            code, text = self._spawn_error(exc, argv, cwd)
            with contextlib.suppress(OSError):
                os.write(stdio[2], text)
            self._reply(conn, {"started": False, "exit": code}, [master] if master >= 0 else [])
            if master >= 0:
                os.close(master)
                os.close(stdio[0])
            self._close(conn)
            return
        if master >= 0:
            os.close(stdio[0])
        self._reply(conn, {"started": True, "pid": pid}, [master] if master >= 0 else [])
        if master >= 0:
            os.close(master)
        self.execs += 1

        def on_exit(code: int) -> None:
            self.execs -= 1
            self._reply(conn, {"exit": code})
            self._close(conn)

        def on_control(sock: socket.socket) -> None:
            try:
                ctl, extra = protocol.recv(sock)
            except (OSError, protocol.ProtocolError):
                ctl, extra = None, []
            for fd in extra:
                os.close(fd)
            sig: int = signal.SIGKILL
            if ctl is not None:
                value = ctl.get("signal", signal.SIGKILL)
                sig = value if isinstance(value, int) and 0 < value < 65 else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if ctl is None:  # runner went away: the session is over
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(sock)

        self.children[pid] = on_exit
        self.sel.modify(conn, selectors.EVENT_READ, on_control)

    def _file_op(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        if len(fds) != 1:
            raise BadRequest("file ops need one pipe fd")
        path = msg.get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise BadRequest("path must be an absolute path")
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN: the sandbox is out of PIDs or memory
            self._reply(conn, fileops.error_reply(exc, path))
            self._close(conn)
            return
        if pid == 0:  # worker: blocking, short-lived, then _exit
            code = 0
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                keep = {conn.fileno(), fds[0], self.root.fd, 1, 2}
                _close_fds_except(keep)
                # Left at the agent's OOM score: user processes (+500) go first, so a
                # sandbox full of its own processes still gets its files read and written.
                if msg["op"] == "read_file":
                    fileops.read_file(self.root, conn, msg, fds[0])
                else:
                    fileops.write_file(self.root, conn, msg, fds[0])
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = lambda _code: None
        self._close(conn)


def _close_fds_except(keep: set[int]) -> None:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(3, 4096)]
    for name in names:
        fd = int(name)
        if fd not in keep and fd > 0:
            with contextlib.suppress(OSError):
                os.close(fd)
