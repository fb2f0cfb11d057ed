"""Keepers and agents forked ahead by the zygote (``spares.py``).

A spare pair waits, holding nothing of any sandbox, until a create claims it; the claimed
sandbox must be exactly what a freshly forked one is. These tests find the spares by
their process name and parent, claim them, and look at what every process holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.base import MountedFile
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.errors import SandboxStartError
from sandboxd.backends.local import LocalBackend, protocol
from sandboxd.backends.local.state import SandboxRecord
from sandboxd.images import ImageStore
from tests.support.polling import until

from .image_refs import BUSYBOX

SPARE = "sandboxd-spare"


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """``(comm, ppid)`` of a live process; None once it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid = raw.rsplit(")", 1)[1].split()[:2]
    return None if state in "ZX" else (comm, int(ppid))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def spares_of(zygote: int) -> dict[int, int]:
    """Spare keeper pid -> its spare agent's pid, for every complete pair of ``zygote``."""
    pairs = {}
    for keeper in _children(zygote):
        if (_stat_fields(keeper) or ("", 0))[0] != SPARE:
            continue
        agents = [a for a in _children(keeper) if (_stat_fields(a) or ("", 0))[0] == SPARE]
        if len(agents) == 1:
            pairs[keeper] = agents[0]
    return pairs


async def two_pairs(backend: LocalBackend) -> tuple[int, dict[int, int]]:
    """The zygote's pid and its two spare pairs, once both are forked."""
    zygote = _zygote_pid(backend)
    pairs = await until(
        "two spare pairs", lambda: len(spares_of(zygote)) >= 2 and spares_of(zygote)
    )
    assert isinstance(pairs, dict)
    return zygote, pairs


def fd_targets(pid: int) -> dict[int, str]:
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return fds


def _zygote_pid(backend: LocalBackend) -> int:
    proc = backend._zygote._proc
    assert proc is not None
    return proc.pid


def _record(backend: LocalBackend, sid: str) -> SandboxRecord:
    return backend._records[sid]


@pytest.fixture
def backend(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> Iterator[LocalBackend]:
    made = LocalBackend(tmp_path / "spares", images=image_store)
    yield made
    go(aio, made.close())


def test_a_create_claims_a_pair_forked_ahead_and_gets_what_a_fork_gets(
    aio: asyncio.Runner, backend: LocalBackend
) -> None:
    """The second create is served by a spare pair: its keeper and agent are processes
    that existed before it was asked for. Its agent holds the same kinds of descriptors
    as the first sandbox's freshly forked agent, and none of them is a host file (the
    zygote's log, which every fork of it starts with, included)."""
    h = Harness(backend, BUSYBOX, None, lambda: backend)

    async def scenario() -> None:
        async with h.sandbox(command=("sleep", "1000")) as first:
            _zygote, pairs = await two_pairs(backend)
            files = (MountedFile("/etc/spare.conf", b"one"), MountedFile("/new/dir/two", b"2"))
            async with h.sandbox(command=("sleep", "1000"), mounted_files=files) as second:
                rec = _record(backend, second)
                assert rec.keeper_pid in pairs, (rec.keeper_pid, pairs)
                agent = rec.agent_pid
                assert agent is not None and agent == pairs[rec.keeper_pid]
                assert (_stat_fields(agent) or ("gone",))[0] == "sandboxd-init"
                assert (await run(h, second, ["echo", "claimed"])).stdout == b"claimed\n"
                # The mounted files its keeper copied after the claim: in place, read-only.
                both = await run(h, second, ["cat", "/etc/spare.conf", "/new/dir/two"])
                assert both.stdout == b"one2", both
                write = await run(h, second, ["sh", "-c", "echo x > /etc/spare.conf"])
                assert write.code != 0 and b"Read-only" in write.stderr, write
                forked_agent = _record(backend, first).agent_pid
                assert forked_agent is not None
                forked, claimed = fd_targets(forked_agent), fd_targets(agent)

                def kinds(fds: dict[int, str]) -> list[str]:
                    """Sockets left out: an exec's connection closes a moment after it."""
                    named = (t.split(":")[0] if ":" in t else t for t in fds.values())
                    return sorted(kind for kind in named if kind != "socket")

                assert kinds(claimed) == kinds(forked), (claimed, forked)
                for fds in (claimed, forked):  # the listening socket, at least
                    assert any(t.startswith("socket:") for t in fds.values()), fds
                # Paths as the agent sees them: its root and its /dev/null.
                own = ("/", "/dev/null")
                host_files = [t for t in claimed.values() if t.startswith("/") and t not in own]
                assert host_files == [], claimed
                # Its pid namespace is its own: PID 1 inside is the claimed agent.
                ps = await run(h, second, ["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"])
                assert ps.code == 0, ps
                # the shell, ls, grep, sleep and PID 1: no spare or zygote is visible
                assert int(ps.stdout.split()[1]) <= 5, ps.stdout

    go(aio, scenario())


def test_a_spare_holds_nothing_of_any_sandbox_while_it_waits(
    aio: asyncio.Runner, backend: LocalBackend
) -> None:
    """Until claimed, a spare pair holds only what it made itself: its output, status,
    diagnostics and readiness pipes, the agent's socket (not bound to any path yet) and
    its sockets to the zygote and to each other, plus the sealed keeper program in the
    keeper; 0-2 are the zygote's stdin and log, as in any fork of it until the agent
    sheds them. No descriptor of a sandbox, of the runner or of another child."""
    h = Harness(backend, BUSYBOX, None, lambda: backend)

    def kinds(fds: dict[int, str]) -> list[str]:
        return sorted(t.split(":")[0] for fd, t in fds.items() if fd > 2)

    own = ["pipe"] * 5 + ["socket"] * 3
    keepers_own = (own, ["/memfd", *own])

    def settled(zygote: int) -> dict[int, int]:
        """The pairs that hold only their own descriptors (see below)."""
        return {
            keeper: agent
            for keeper, agent in spares_of(zygote).items()
            if kinds(fd_targets(agent)) == own and kinds(fd_targets(keeper)) in keepers_own
        }

    async def scenario() -> None:
        async with h.sandbox(command=("sleep", "1000")):
            zygote = _zygote_pid(backend)
            # A pair forked a moment ago still holds what it inherited from its fork (the
            # sealed keeper program, the listing of /proc/self/fd) until it has closed it
            # (the zygote forks spares 15 ms after a spawn): a pair must get there, and its
            # descriptors are then exactly these, memfds named and no host path shown.
            pairs = await until(
                "a spare pair with only its own descriptors", lambda: settled(zygote)
            )
            assert isinstance(pairs, dict)
            for keeper, agent in pairs.items():
                agent_fds = fd_targets(agent)
                assert kinds(agent_fds) == own, agent_fds
                keeper_fds = fd_targets(keeper)
                assert kinds(keeper_fds) in keepers_own, keeper_fds
                memfds = [t for t in keeper_fds.values() if t.startswith("/memfd")]
                assert all("sandboxd-keeper" in t for t in memfds), keeper_fds
                for pid in (keeper, agent):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    assert cmdline.rstrip(b"\0") == SPARE.encode(), cmdline  # no host path

    go(aio, scenario())


def test_spares_end_with_their_zygote_and_a_dead_spare_is_passed_over(
    aio: asyncio.Runner, backend: LocalBackend
) -> None:
    """A spare killed while it waits costs nothing: the next create is served by another
    one or a fresh fork. A zygote killed with SIGKILL takes its spares with it (they see
    EOF), while the sandboxes it already made keep running."""
    h = Harness(backend, BUSYBOX, None, lambda: backend)

    async def scenario() -> None:
        async with h.sandbox(command=("sleep", "1000")) as first:
            zygote, pairs = await two_pairs(backend)
            for keeper in pairs:
                os.kill(keeper, signal.SIGKILL)
            gone = list(pairs) + list(pairs.values())
            await until("the killed spares gone", lambda: not any(map(_stat_fields, gone)))
            async with h.sandbox() as second:
                assert (await run(h, second, ["echo", "served"])).stdout == b"served\n"
            again = await until("spares again", lambda: spares_of(zygote))
            assert isinstance(again, dict)
            os.kill(zygote, signal.SIGKILL)
            spares = list(again) + list(again.values())
            await until(
                "the spares gone with their zygote", lambda: not any(map(_stat_fields, spares))
            )
            assert (await run(h, first, ["echo", "still"])).stdout == b"still\n"

    go(aio, scenario())


def _named(pid: int) -> str | None:
    """The process name of ``pid`` (a zombie included); None once nothing has that pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.index("(") + 1 : raw.rindex(")")]


def test_a_zygote_that_shuts_down_reaps_its_spares_before_it_exits(
    aio: asyncio.Runner, backend: LocalBackend
) -> None:
    """A backend closed with nothing running shuts its zygote down; the zygote lets its
    spare pairs go and reaps them before it exits. Before, they ended only when its exit
    closed their sockets and were handed to init as zombies (four found right after a
    quickstart's SIGTERM): a host whose PID 1 does not reap kept them for good."""
    h = Harness(backend, BUSYBOX, None, lambda: backend)

    async def scenario() -> None:
        async with h.sandbox():
            pass
        zygote, pairs = await two_pairs(backend)
        spares = [*pairs, *pairs.values()]
        await backend.close()
        await until("the zygote exited", lambda: _stat_fields(zygote) is None)
        left = [pid for pid in spares if _named(pid) == SPARE]
        assert left == [], f"spares left to init: {left}"

    go(aio, scenario())


def test_a_claimed_spare_that_fails_reports_why_and_the_next_create_works(
    aio: asyncio.Runner, backend: LocalBackend
) -> None:
    """A mounted file aimed at a directory fails in the claimed agent, after its keeper
    sent the files: the create fails with the agent's own reason, the pair is gone, and
    the next create (served by another spare) works."""
    h = Harness(backend, BUSYBOX, None, lambda: backend)

    async def scenario() -> None:
        async with h.sandbox(command=("sleep", "1000")):
            zygote, pairs = await two_pairs(backend)
            bad = (MountedFile("/etc", b"x"),)
            with pytest.raises(SandboxStartError, match="directory"):
                async with h.sandbox(mounted_files=bad):
                    pass
            claimed = [k for k in pairs if k not in spares_of(zygote)]
            assert len(claimed) == 1, (pairs, spares_of(zygote))
            used = [claimed[0], pairs[claimed[0]]]
            await until("the failed pair gone", lambda: not any(map(_stat_fields, used)))
            async with h.sandbox() as third:
                assert (await run(h, third, ["echo", "next"])).stdout == b"next\n"

    go(aio, scenario())


def test_a_handover_carries_more_descriptors_than_one_message_in_order() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipes = [os.pipe() for _ in range(75)]
    sent = [fd for pair in pipes for fd in pair]  # 150: three messages
    try:
        protocol.send_handover(a, {"op": "claim"}, sent)
        msg, got = protocol.recv_handover(b)
        assert msg is not None and msg["op"] == "claim" and msg["fd_count"] == 150
        assert [os.fstat(fd).st_ino for fd in got] == [os.fstat(fd).st_ino for fd in sent]
        assert all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in got)
        for fd in got:
            os.close(fd)
        # A sender gone mid-way: the receiver refuses it and keeps none of what came.
        protocol.send(a, {"op": "claim", "fd_count": 10}, sent[:4])
        a.close()
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(protocol.ProtocolError, match="4 of 10"):
            protocol.recv_handover(b)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        for fd in sent:
            os.close(fd)
        a.close()
        b.close()
