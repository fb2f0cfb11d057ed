"""The zygote: a small, single-threaded Python process that forks every sandbox.

Why a zygote: starting a Python interpreter per sandbox costs tens of milliseconds, and
forking the runner itself is unsafe (it is multi-threaded: gRPC, asyncio executors). The
zygote imports everything the keeper and the agent need once, then for each request forks
the sandbox's keeper (``keeper.py``), which prepares the host side and forks the agent,
PID 1 of the new PID namespace (``boot.py``); or, more often, it hands the request to a
keeper and agent pair it forked ahead while idle (``spares.py``), so a create forks
nothing on its path. The zygote is started in its own session and
is a child subreaper, so keepers are reaped even after the runner that started it has died;
a restarted runner simply reconnects to its socket (``protocol.ZYGOTE_SOCKET``). Once its
run directory is deleted and its last keeper has ended, nobody can reach it or needs it, and
it exits.

The runner starts it from a sealed in-memory copy of the Python interpreter (see
``supervisor.py``), so no process of a sandbox ever has a host binary as its executable:
``/proc/<pid>/exe`` of the agent is that sealed copy, which nothing can write
(CVE-2019-5736).

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
import time
from collections import deque
from typing import Any

from . import protocol, seccomp, spares, syscalls, userns
from .agent import ignored_signals
from .keeper import load_native_keeper, run_keeper

ABANDONED_CHECK_SECONDS = 5.0
"""How often an idle zygote looks whether it was abandoned (:meth:`Zygote._abandoned`)."""
EMPTY_NETNS_AHEAD = 4
"""Empty network namespaces kept ready for sandboxes without a network (egress none)."""
SPARES_AHEAD = 2
"""Keeper and agent pairs forked ahead (``spares.py``) once a sandbox was asked for."""
SPARES_END_SECONDS = 1.0
"""How long a zygote that shuts down waits for its spare pairs to end (``_end_spares``)."""
QUIET_AFTER_SPAWN_SECONDS = 0.015
"""After a spawn, work made ahead (spares, namespaces) waits this long. Why: it was done at
once, while the sandbox just handed out built itself, and a spare pair is two forks of a
Python process (2-3 ms of CPU) competing with that build, its keeper and the runner on a
small host. 15 ms covers a build; a client creating sandboxes one after another asks again
20 ms or more later, and a spare is left for it meanwhile (``SPARES_AHEAD``)."""


def idle_wait(idle_work: bool, quiet_until: float, now: float) -> float:
    """How long the zygote's loop waits for a message before it does something itself.

    With work made ahead to do, until the quiet time after the last spawn is over (0 when
    it is); without, until the next look whether it was abandoned.
    """
    if not idle_work:
        return ABANDONED_CHECK_SECONDS
    return max(0.0, quiet_until - now)


def _close_fds_except(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


class Zygote:
    """Accepts runner connections; forks one child per spawn request; reaps everything."""

    def __init__(self, run_dir: str) -> None:
        # Loaded once: every keeper execs this sealed copy after its set-up (keeper.py).
        self.native_keeper = load_native_keeper()
        self.run_dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.listener = protocol.listen(
            protocol.socket_path(self.run_dir_fd, protocol.ZYGOTE_SOCKET)
        )
        self.sel = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, lambda *_: None)  # not SIG_IGN: it would be inherited
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._reap)
        self.running = True
        self.quiet_until = 0.0  # monotonic: no work made ahead before (see QUIET_AFTER_SPAWN)
        # User namespaces made ahead of time for id ranges the runner has claimed: creating
        # one costs a fork and two map writes (~2 ms), too much for the create path.
        self.namespaces: dict[int, tuple[int, int, int]] = {}  # slot -> (first, count, fd)
        self.prepare_queue: deque[tuple[socket.socket, dict[str, Any]]] = deque()
        # Empty network namespaces made ahead, once a sandbox without a network was asked
        # for: unsharing one costs about a millisecond on the create path. Only these
        # descriptors keep them (no name in /run/netns): nothing outlives the zygote.
        self.empty_netns: list[int] = []
        self.empty_netns_wanted = False
        # Keeper and agent pairs forked ahead (spares.py): a create then forks nothing.
        self.spares: deque[spares.Spare] = deque()
        self.spares_wanted = False

    def _accept(self, _obj: Any) -> None:
        conn, _ = self.listener.accept()
        self.sel.register(conn, selectors.EVENT_READ, self._on_message)

    def _reap(self, _obj: Any) -> None:
        self._drain_wakeups()
        self._reap_ended()

    def _drain_wakeups(self) -> None:
        """Empty the wake-up pipe (a byte per signal, SIGCHLD above all)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass

    @staticmethod
    def _reap_ended() -> bool:
        """Reap every child that has ended; True when no child is left at all."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False

    def _let_spares_go(self) -> None:
        """Fork no more spare pairs, and close the ones there are: they end on EOF."""
        self.spares_wanted = False
        while self.spares:
            self.spares.pop().close()

    def _on_message(self, conn: socket.socket) -> None:
        try:
            msg, fds = protocol.recv(conn, protocol.MAX_SPAWN_FDS)
        except (OSError, protocol.ProtocolError):
            msg, fds = None, []
        disk_fd = fds.pop(0) if fds and msg is not None and msg.get("op") == "spawn" else None
        # A scratch file system (scratch.py) comes second, when the request names one.
        wants_scratch = msg is not None and bool(msg.get("scratch"))
        scratch_fd = fds.pop(0) if fds and disk_fd is not None and wants_scratch else None
        # Then one detached bind per persistent volume (volumes.py), in the request's order.
        wanted = len(msg.get("volumes") or []) if msg is not None and disk_fd is not None else 0
        volume_fds, fds = tuple(fds[:wanted]), fds[wanted:]  # too few: the agent refuses
        # Last, the network namespace the runner made, when the request says it has one.
        wants_netns = msg is not None and disk_fd is not None and bool(msg.get("netns"))
        netns_fd = fds.pop(0) if fds and wants_netns else None  # none: the keeper refuses
        for fd in fds:
            os.close(fd)
        if msg is None:
            self.sel.unregister(conn)
            conn.close()
            return
        op = msg.get("op")
        if op == "spawn":
            self._spawn(conn, msg, disk_fd, scratch_fd, volume_fds, runner_netns_fd=netns_fd)
        elif op == "prepare_userns":
            self.prepare_queue.append((conn, msg))  # after pending spawns: see serve()
        elif op == "ping":
            native = self.native_keeper is not None
            reply = {"ok": True, "pid": os.getpid(), "native_keeper": native}
            with contextlib.suppress(OSError):
                protocol.send(conn, reply)
        elif op == "shutdown":
            with contextlib.suppress(OSError):
                protocol.send(conn, {"ok": True, **({"req": msg["req"]} if "req" in msg else {})})
            self.running = False

    def _spawn(
        self,
        conn: socket.socket,
        msg: dict[str, Any],
        disk_fd: int | None,
        scratch_fd: int | None = None,
        volume_fds: tuple[int, ...] = (),
        *,
        runner_netns_fd: int | None = None,
    ) -> None:
        """Hand the request to a spare pair, or fork a keeper for it.

        The sandbox gets the user namespace and the writable layer; the zygote keeps
        neither: a layer it held would outlive its sandbox. Only a request with a user
        namespace made ahead, and with every descriptor it names, goes to a spare
        (``spares.py``); the others go to a fork, which reports what is missing.
        ``runner_netns_fd`` is the network namespace the runner made (egress), if any.
        """
        self.quiet_until = time.monotonic() + QUIET_AFTER_SPAWN_SECONDS
        userns_fd: int | None = None
        netns_fd: int | None = None
        if not msg.get("netns"):  # no network of the runner's: an empty one, if one is ready
            self.empty_netns_wanted = True
            netns_fd = self.empty_netns.pop() if self.empty_netns else None
        pooled = self.namespaces.pop(msg.get("uid_slot", -1), None)
        if pooled is not None:
            first, count, fd = pooled
            if (first, count) == (msg.get("uid_first"), msg.get("uid_count")):
                userns_fd = fd
            else:
                os.close(fd)
        self.spares_wanted = True
        complete = (
            userns_fd is not None
            and disk_fd is not None
            and (runner_netns_fd is not None or not msg.get("netns"))
            and len(volume_fds) == len(msg.get("volumes") or [])
            and (scratch_fd is not None or not msg.get("scratch"))
        )
        named = {
            "userns": userns_fd, "disk": disk_fd, "scratch": scratch_fd,
            "empty_netns": netns_fd, "netns": runner_netns_fd,
            **{f"volume{i}": fd for i, fd in enumerate(volume_fds)},
        }  # fmt: skip
        if not (complete and self._claim_spare(conn, msg, named)):
            self._fork_keeper(conn, msg, userns_fd, netns_fd, disk_fd, scratch_fd, volume_fds,
                              runner_netns_fd)  # fmt: skip
        for held in (userns_fd, netns_fd, runner_netns_fd, disk_fd, scratch_fd, *volume_fds):
            if held is not None:
                os.close(held)

    def _claim_spare(
        self, conn: socket.socket, msg: dict[str, Any], named: dict[str, int | None]
    ) -> bool:
        """Hand the sandbox to a spare pair; False when none is left alive."""
        while self.spares:
            spare = self.spares.popleft()
            try:
                spares.claim(spare, msg, named, conn.fileno())
                return True
            except OSError:
                continue  # it died while waiting: the next one, or a fork
            finally:
                spare.close()
        return False

    def _fork_keeper(  # noqa: PLR0917 - each argument a distinct descriptor
        self,
        conn: socket.socket,
        msg: dict[str, Any],
        userns_fd: int | None,
        netns_fd: int | None,
        disk_fd: int | None,
        scratch_fd: int | None,
        volume_fds: tuple[int, ...],
        runner_netns_fd: int | None,
    ) -> None:
        """Fork a keeper for this one request (no spare pair was ready or could take it)."""
        try:
            pid = os.fork()
        except OSError as exc:
            with contextlib.suppress(OSError):
                protocol.send(conn, {"req": msg.get("req"), "ok": False, "error": str(exc)})
            return
        if pid == 0:
            keep = {conn.fileno(), 0, 1, 2}
            held_fds = (
                userns_fd, netns_fd, runner_netns_fd, disk_fd, scratch_fd, self.native_keeper,
                *volume_fds,
            )  # fmt: skip
            keep.update(fd for fd in held_fds if fd is not None)
            self._as_child(keep)
            run_keeper(
                msg,
                conn,
                userns_fd,
                disk_fd,
                self.native_keeper,
                scratch_fd=scratch_fd,
                volume_fds=volume_fds,
                empty_netns_fd=netns_fd,
                netns_fd=runner_netns_fd,
            )

    def _fork_spare(self) -> None:
        """One more spare pair (``spares.py``), forked while nothing else waits."""
        try:
            self.spares.append(spares.fork_spare(self.native_keeper, self._as_child))
        except OSError as exc:  # creates fork their keepers themselves meanwhile
            print(f"sandboxd-zygote: no keeper forked ahead: {exc}", flush=True)
            self.spares_wanted = False

    @staticmethod
    def _as_child(keep: set[int]) -> None:
        """In a fresh fork: the default signal handling, and no descriptor but ``keep``."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _close_fds_except(keep)

    def _prepare_one(self) -> None:
        conn, msg = self.prepare_queue.popleft()
        reply: dict[str, Any] = {"req": msg.get("req")}
        try:
            slot, first, count = int(msg["uid_slot"]), int(msg["uid_first"]), int(msg["uid_count"])
            if slot not in self.namespaces:
                made = userns.create_userns(first, count, self.native_keeper)
                self.namespaces[slot] = (first, count, made)
            reply["ok"] = True
        except (OSError, KeyError, TypeError, ValueError, userns.IdRangeError) as exc:
            reply.update(ok=False, error=str(exc))
        with contextlib.suppress(OSError):
            protocol.send(conn, reply)

    def serve(self, ready_fd: int | None) -> None:
        """Signal readiness on ``ready_fd`` and loop until asked to shut down.

        Spawns are served as they arrive; work made ahead (user namespaces the runner asked
        for, spare pairs, empty network namespaces) only when nothing else is waiting, so a
        burst of creates never queues behind it, and not within
        ``QUIET_AFTER_SPAWN_SECONDS`` of a spawn, so it does not compete with that build.
        """
        if ready_fd is not None:
            os.write(ready_fd, b"ok")
            os.close(ready_fd)
        while self.running:
            idle_work = bool(self.prepare_queue or self._spares_short() or self._netns_short())
            events = self.sel.select(idle_wait(idle_work, self.quiet_until, time.monotonic()))
            for key, _mask in events:
                key.data(key.fileobj)
            if events or (idle_work and time.monotonic() < self.quiet_until):
                continue
            if self.prepare_queue:
                self._prepare_one()
            elif self._spares_short():
                self._fork_spare()
            elif self._netns_short():
                self._make_empty_netns()
            elif self._abandoned():
                self.running = False
        self._end_spares()

    def _end_spares(self) -> None:
        """Let the spare pairs go and reap them, and any other child ending meanwhile.

        Why before exiting: a pair ends on EOF, which it sees only once this process is
        gone, and it was then handed to init as a zombie (two per pair; a spare agent
        whose keeper ended first comes to us, the subreaper). A host whose PID 1 does not
        reap (a container started without an init) kept them for good, four per runner
        stop. Bounded by ``SPARES_END_SECONDS``: a child still running then (a keeper
        whose sandbox is still being torn down) is left as before.
        """
        self._let_spares_go()
        deadline = time.monotonic() + SPARES_END_SECONDS
        while not self._reap_ended():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([self.wake_r], [], [], left)  # woken by SIGCHLD, or the deadline
            self._drain_wakeups()

    def _spares_short(self) -> bool:
        return self.spares_wanted and len(self.spares) < SPARES_AHEAD

    def _netns_short(self) -> bool:
        return self.empty_netns_wanted and len(self.empty_netns) < EMPTY_NETNS_AHEAD

    def _make_empty_netns(self) -> None:
        """One more empty network namespace ready (only ``lo``, down; the agent brings it up)."""
        try:
            self.empty_netns.append(
                syscalls.namespace_by_helper(
                    syscalls.CLONE_NEWNET, "net", lambda _pid: None, self.native_keeper
                )
            )
        except OSError as exc:  # the sandbox then unshares its own, as without the pool
            print(f"sandboxd-zygote: no empty network namespace made ahead: {exc}", flush=True)
            self.empty_netns_wanted = False

    def _abandoned(self) -> bool:
        """Whether nobody can reach this zygote, nor needs it.

        True once its run directory was deleted (no runner can find its socket again) and
        no keeper or other child is left. A runner killed for good whose data directory is
        then removed would otherwise leave its zygote idling forever.
        """
        try:
            if os.fstat(self.run_dir_fd).st_nlink > 0:
                return False
            self._let_spares_go()  # a later look finds them gone
            return self._reap_ended()  # True: no child at all
        except OSError:
            return False


def main() -> None:
    """Entry point: ``RUN_DIR [READY_FD [EXE_FD]]``."""
    syscalls.set_process_name("sandboxd-zygote")
    syscalls.set_cmdline(f"sandboxd-zygote {sys.argv[1]}")
    ignored_signals()  # before any handler of ours: what every agent resets (agent.py)
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    run_dir = sys.argv[1]
    ready_fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if len(sys.argv) > 3:  # the sealed interpreter we were started from: exe keeps it alive
        with contextlib.suppress(OSError):
            os.close(int(sys.argv[3]))
    zygote = Zygote(run_dir)
    seccomp.prepare()
    syscalls.last_cap()
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) inherited pages
    zygote.serve(ready_fd)


if __name__ == "__main__":
    main()
