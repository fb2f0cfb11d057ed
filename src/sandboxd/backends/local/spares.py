"""Keepers and agents forked ahead of need, and how a create claims a pair of them.

Why: forking the Python zygote costs about a millisecond in the parent and as much again
before the child runs, and a cold create forked twice on its path: the zygote its keeper,
the keeper its agent. Then the agent waited for the keeper's set-up before it could start
its own. A spare pair does both forks while the zygote is idle::

    zygote ──fork (when idle)──► spare keeper ──fork──► spare agent (PID 1 of a new PID ns)
      │                             ▲                     ▲
      └──── one socket to each ─────┴─────────────────────┘

A create claims a pair with two handovers at once (:func:`claim`). The agent gets the
request and what the runner made for the sandbox (user namespace, writable layer, network,
scratch, volumes) and builds the sandbox at once; meanwhile the keeper gets the request and
the runner's connection, opens the state directory and ``main.log``, copies the mounted
files, binds the agent's socket and moves the agent into its cgroups, then tells the agent
so on their own socket, with the files, which the agent places once its root is built
(``boot._await_join``). From there on both are exactly what a forked pair is.

Until claimed a pair holds nothing of any sandbox: pipes and an unbound socket it made
itself, its sockets to the zygote and to each other, the sealed keeper program, and the
zygote's stdin and log as 0-2 (as any fork of the zygote, until the agent sheds them).
Both wait for their claim or for the end of the other: EOF from the zygote (it exited, or
let its spares go) or from the partner (killed) ends a spare without a trace.

Only a request whose user namespace the zygote made ahead is handed to a spare: a keeper
that made one itself would start the namespace helper inside its agent's PID namespace.

Standard library only (runs in the zygote and its children).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from . import protocol, syscalls
from .boot import AgentFds, agent_main, close_fds_except
from .keeper import Kept, join_cgroups, keep_sandbox, open_state, report_failure, sealed_files

SPARE_NAME = "sandboxd-spare"
"""Process name and command line of a spare keeper or agent until it is claimed."""
_PIPES = ("stdout", "stderr", "status", "diag", "ready")


@dataclass
class Spare:
    """The zygote's ends of one spare pair."""

    keeper_pid: int
    keeper: socket.socket
    agent: socket.socket

    def close(self) -> None:
        """Let the pair go: both see EOF and end (an unclaimed pair), or go on (claimed)."""
        self.keeper.close()
        self.agent.close()


def fork_spare(native_fd: int | None, prepare_child: Callable[[set[int]], None]) -> Spare:
    """Fork a spare keeper (which forks its agent); raises ``OSError`` when fork fails.

    ``prepare_child`` runs first in the child with the descriptors it must keep: the
    zygote resets its signal handling there and closes everything else.
    """
    keeper_ours, keeper_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    agent_ours, agent_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        for sock in (keeper_ours, keeper_theirs, agent_ours, agent_theirs):
            sock.close()
        raise
    if pid == 0:
        keep = {0, 1, 2, keeper_theirs.fileno(), agent_theirs.fileno()}
        if native_fd is not None:
            keep.add(native_fd)
        prepare_child(keep)
        _spare_keeper(keeper_theirs, agent_theirs, native_fd)
    keeper_theirs.close()
    agent_theirs.close()
    return Spare(pid, keeper_ours, agent_ours)


def claim(spare: Spare, req: dict[str, Any], named: dict[str, int | None], reply: int) -> None:
    """Hand a spare pair its sandbox; raises ``OSError`` when either of them is gone.

    ``named`` are the agent's descriptors from the runner (``userns``, ``disk``,
    ``scratch``, ``volume<N>``, ``empty_netns``, ``netns``; None values left out), ``reply``
    the runner's connection, for the keeper. The agent is told first: a keeper claimed
    without its agent would report a failed create, while an agent claimed without its
    keeper only ends (its keeper's socket is closed), and the caller tries another pair.
    The caller still owns every descriptor either way. A pair that already lost either
    half is refused before anything is sent: an agent that attached the writable layer and
    then ended would leave the next try a layer that is no longer detached.
    """
    poller = select.poll()
    for sock in (spare.agent, spare.keeper):
        poller.register(sock, select.POLLOUT)
    if gone := [fd for fd, ev in poller.poll(0) if ev & (select.POLLHUP | select.POLLERR)]:
        raise ConnectionResetError(f"a spare pair lost {len(gone)} of its processes")
    protocol.send_named(spare.agent, {"req": req}, named)
    protocol.send_named(spare.keeper, {"req": req}, {"reply": reply})


def _wait_for_claim(
    zygote: socket.socket, partner: socket.socket
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The claim from the zygote, or ``(None, {})`` once the zygote or the partner is gone."""
    poller = select.poll()
    poller.register(zygote, select.POLLIN)
    poller.register(partner, select.POLLIN)  # nothing comes before the claim: only its end
    ready = dict(poller.poll())
    if zygote.fileno() in ready:
        return protocol.recv_named(zygote)
    return None, {}


def _spare_keeper(
    zygote: socket.socket, agent_end: socket.socket, native_fd: int | None
) -> NoReturn:
    """The spare keeper: make the agent's pipes and socket, fork it, wait, then keep."""
    try:
        os.setsid()
        syscalls.set_process_name(SPARE_NAME)
        syscalls.set_cmdline(SPARE_NAME)  # not the zygote's: it names host paths
        syscalls.unshare(syscalls.CLONE_NEWPID)
        pipes = {name: os.pipe2(os.O_CLOEXEC) for name in _PIPES}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        chan, agent_chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            zygote.close()
            chan.close()
            for read_end, _write_end in pipes.values():
                os.close(read_end)
            writers = {name: write_end for name, (_read_end, write_end) in pipes.items()}
            _spare_agent(agent_end, agent_chan, listener, writers)
        agent_end.close()
        agent_chan.close()
        for _read_end, write_end in pipes.values():
            os.close(write_end)
        msg, named = _wait_for_claim(zygote, chan)
        if msg is None:
            os._exit(0)
        zygote.close()
        req = msg["req"]
        reply = socket.socket(fileno=named["reply"])
    except BaseException:  # nobody to tell: the runner's spawn times out
        os._exit(1)
    try:
        syscalls.set_process_name("sandboxd-keeper")
        state_fd, log_fd = open_state(req)
        files = sealed_files(req)
        protocol.bind_listener(listener, protocol.socket_path(state_fd, "agent.sock"))
        listener.close()
        joined = join_cgroups(pid, req).decode(errors="replace")
        file_fds = {f"file{i}": fd for i, (_path, fd) in enumerate(files)}
        paths = [path for path, _fd in files]
        with contextlib.suppress(OSError):  # the agent failed; its report follows
            protocol.send_named(chan, {"joined": joined, "files": paths}, dict(file_fds))
        for fd in file_fds.values():
            os.close(fd)
        chan.close()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        report_failure(req, reply, exc)
    outputs = (pipes["stdout"][0], pipes["stderr"][0], pipes["status"][0], pipes["diag"][0])
    kept = Kept(state_fd, log_fd, pid, pipes["ready"][0], outputs)
    keep_sandbox(req, reply, kept, native_fd)


def _spare_agent(
    zygote: socket.socket, keeper: socket.socket, listener: socket.socket, writers: dict[str, int]
) -> NoReturn:
    """The spare agent: wait for the claim, then boot as any agent (files come later)."""
    try:
        close_fds_except(
            {0, 1, 2, zygote.fileno(), keeper.fileno(), listener.fileno(), *writers.values()}
        )
        msg, named = _wait_for_claim(zygote, keeper)
        if msg is None:
            os._exit(0)
        zygote.close()
        volumes = sorted((n for n in named if n.startswith("volume")), key=lambda n: int(n[6:]))
        fds = AgentFds(
            listener=listener.detach(),
            stdout_w=writers["stdout"],
            stderr_w=writers["stderr"],
            status_w=writers["status"],
            diag_w=writers["diag"],
            ready_w=writers["ready"],
            joined_r=keeper.detach(),
            userns=named["userns"],
            disk=named["disk"],
            netns=named.get("netns"),
            empty_netns=named.get("empty_netns"),
            scratch=named.get("scratch"),
            volumes=[named[name] for name in volumes],
        )
        req = msg["req"]
    except BaseException:  # the keeper sees the ready pipe close and reports it
        os._exit(1)
    agent_main(req, fds, late_files=True)
