"""The runner's connection to its zygote: start it once, reconnect after a restart.

Why the zygote outlives the runner: it is the parent (subreaper) of every keeper, so it must
keep reaping them while a runner restarts; the new runner finds it through
``<data_dir>/run/`` (``protocol.ZYGOTE_SOCKET``). Replies to spawn requests come back on the shared
connection tagged with the request id (each is sent by the forked keeper that did the work,
as one SEQPACKET message), so concurrent creates never wait for each other.

Why a sealed copy of the interpreter: every keeper and agent is a fork of the zygote, so
their ``/proc/<pid>/exe`` is whatever binary the zygote was started from. Started from the
host's ``python3``, a sandbox process could reach that host file through the link (the
runc CVE-2019-5736 pattern). Like runc, we copy the interpreter into a memfd, seal it
against writes, and execute the copy: the link then names an anonymous, immutable file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable
from . import protocol
from .process import wait_readable

log = logging.getLogger(__name__)

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from sandboxd.backends.local.zygote import main; main()"
)
READY_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 5.0  # seconds a zygote asked to exit may take before it is killed
_MFD_EXEC = 0x10  # Linux 6.3+: say explicitly that this memfd is meant to be executed
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_interpreter() -> int | None:
    """A sealed memfd holding this Python interpreter's binary; None if memfds cannot exec."""
    exe = os.path.realpath(sys.executable)
    fd = -1
    for flags in (os.MFD_ALLOW_SEALING | _MFD_EXEC, os.MFD_ALLOW_SEALING):
        try:
            fd = os.memfd_create("sandboxd-python", flags)
            break
        except OSError:
            continue
    if fd < 0:
        return None
    try:
        with open(exe, "rb") as src:
            while chunk := src.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(fd)
        return None
    return fd


class ZygoteError(BackendUnavailable):
    """The zygote could not be started or reached.

    Why "unavailable": every sandbox starts through the zygote, so a runner whose zygote
    will not start fails every create, whatever it asks for; reported as the backend being
    unavailable, that counts against the runner and placement backs it off, where a start
    error (the request's fault) left it the least loaded runner, which got every Start.
    """


class ZygoteLost(ZygoteError):
    """The zygote went away before it answered: no sandbox of the request exists; it may go again.

    Why that holds: a keeper that took a request keeps a copy of the runner's connection
    until it has replied (``spares.py``), so the connection ends only after every request
    a keeper took was answered, and its reply is read before the end. A request still
    unanswered then was never taken by a keeper (a spare agent that took it alone ends with
    its keeper), or by one that died before it answered, whose agent died with it
    (parent-death signal), taking the sandbox along. Only in that last case, the keeper and
    the zygote both killed while the sandbox was built, can its main process have started.
    A request whose send failed was never read.
    """


class ZygoteClient:
    """Starts (or finds) the zygote of one data directory and multiplexes spawn requests."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._dir_fd: int | None = None

    def _path(self) -> str:
        if self._dir_fd is None:
            self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._dir_fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return protocol.socket_path(self._dir_fd, protocol.ZYGOTE_SOCKET)

    def _retire_earlier(self) -> None:
        """Ask zygotes of earlier versions in this run directory to exit (best effort).

        Before this one starts its own: an earlier zygote reads spawn requests the old
        way (``protocol.ZYGOTE_SOCKET`` says why the name is versioned), so it must not
        idle on beside the new one. Its sandboxes keep running: their keepers are
        re-parented when it exits, as when a zygote is killed.
        """
        assert self._dir_fd is not None
        for name in protocol.EARLIER_ZYGOTE_SOCKETS:
            path = protocol.socket_path(self._dir_fd, name)
            with contextlib.suppress(OSError, protocol.ProtocolError):
                with protocol.connect(path) as sock:
                    protocol.send(sock, {"op": "shutdown"})
                log.info("asked the zygote of an earlier version (%s) to exit", name)
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def ensure(self, start: bool = True) -> None:
        """Connect to a running zygote, or (``start``) start one; else ``ZygoteError``.

        Only work a create waits for starts a zygote. Work made ahead and a shutdown find
        one or give up: a refill that comes due after a shutdown (or after its runner let
        the backend go) must not leave a new zygote behind that nobody will ask to exit.
        """
        async with self._lock:
            if self._sock is not None:
                return
            try:
                sock = protocol.connect(self._path())
            except OSError as exc:
                if not start:
                    raise ZygoteError(f"no zygote is running ({exc})") from None
                self._retire_earlier()
                await self._start()
                sock = protocol.connect(self._path())
            sock.setblocking(False)
            self._sock = sock
            asyncio.get_running_loop().add_reader(sock, self._on_readable)

    async def _start(self) -> None:
        exe_fd = sealed_interpreter()
        try:
            if exe_fd is not None:
                try:
                    await self._launch(f"/proc/self/fd/{exe_fd}", exe_fd)
                    return
                except ZygoteError as exc:
                    log.warning("zygote from a sealed interpreter failed (%s); using %s",
                                exc, sys.executable)  # fmt: skip
            await self._launch(sys.executable, None)
        finally:
            if exe_fd is not None:
                os.close(exe_fd)

    async def _launch(self, executable: str, exe_fd: int | None) -> None:
        src = str(Path(__file__).resolve().parents[3])
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        log_file = open(self.run_dir / "zygote.log", "ab")  # noqa: SIM115 - handed to the child
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONHOME": sys.base_prefix,  # a memfd executable cannot locate its stdlib
        }
        argv = [executable, "-s", "-B", "-c", _BOOT, src, str(self.run_dir), str(ready_w)]
        if exe_fd is not None:
            argv.append(str(exe_fd))
        try:
            self._proc = subprocess.Popen(
                argv,
                pass_fds=[ready_w] + ([exe_fd] if exe_fd is not None else []),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                cwd="/",
                env=env,
            )
        except OSError as exc:
            raise ZygoteError(f"cannot execute {executable}: {exc}") from exc
        finally:
            os.close(ready_w)
            log_file.close()
        try:
            await asyncio.wait_for(wait_readable(ready_r), READY_TIMEOUT)
            if os.read(ready_r, 16) != b"ok":
                raise ZygoteError(f"zygote failed to start; see {self.run_dir / 'zygote.log'}")
        except TimeoutError:
            raise ZygoteError("zygote did not become ready") from None
        finally:
            os.close(ready_r)

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg, fds = protocol.recv(self._sock)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = None, []
            for fd in fds:
                os.close(fd)
            if msg is None:
                self._disconnect(ZygoteLost("zygote connection lost"))
                return
            fut = self._pending.pop(int(msg.get("req", 0)), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _disconnect(self, exc: Exception) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    async def spawn(
        self, request: dict[str, Any], timeout: float = 30.0, fds: tuple[int, ...] = ()
    ) -> dict[str, Any]:
        """Ask the zygote to build a sandbox; the reply carries ``ok`` and ``pid`` or ``error``.

        ``fds`` travel with the request (the writable layer's detached mount).
        """
        return await self._call({**request, "op": "spawn"}, timeout, fds)

    async def prepare_userns(self, slot: int, first: int, count: int) -> None:
        """Have the zygote make the user namespace of a claimed id range ahead of time."""
        msg = {"op": "prepare_userns", "uid_slot": slot, "uid_first": first, "uid_count": count}
        reply = await self._call(msg, 30.0, start=False)
        if not reply.get("ok"):
            raise ZygoteError(f"preparing a user namespace failed: {reply.get('error')}")

    async def _call(
        self,
        request: dict[str, Any],
        timeout: float,
        fds: tuple[int, ...] = (),
        *,
        start: bool = True,
    ) -> dict[str, Any]:
        await self.ensure(start)
        assert self._sock is not None
        req = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        try:
            protocol.send(self._sock, {**request, "req": req}, fds)
        except (BrokenPipeError, ConnectionResetError) as exc:  # gone; not yet seen by the loop
            self._disconnect(ZygoteLost(f"zygote connection lost ({exc.strerror or exc})"))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req, None)

    async def shutdown(self) -> None:
        """Ask the zygote to exit (agents it still parents are re-parented to init).

        The connection is closed only once the zygote answered the request or closed its
        end. Why wait: closed at once while a reply was still unread on this side (to a
        user namespace asked for ahead, whose caller was cancelled by the close), the
        kernel reset the connection, the zygote's next read failed (``ECONNRESET``) before
        it read the request behind it, and it idled on until it was killed
        ``SHUTDOWN_TIMEOUT`` later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_TIMEOUT
        with contextlib.suppress(OSError, ZygoteError, TimeoutError):
            await self._call({"op": "shutdown"}, SHUTDOWN_TIMEOUT, start=False)
        self.close()
        if self._proc is not None:
            try:
                await asyncio.to_thread(self._proc.wait, max(0.0, deadline - loop.time()))
            except subprocess.TimeoutExpired:
                # It serves nobody now (shutdown is only asked when nothing runs): a zygote
                # that missed the request must not idle on, so it is ended by its pid.
                log.warning("zygote %d did not exit when asked; killing it", self._proc.pid)
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
            self._proc = None

    def close(self) -> None:
        """Drop the connection; the zygote keeps running."""
        self._disconnect(ZygoteError("closed"))
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
