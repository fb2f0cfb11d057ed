"""Unit tests of the local backend's pure parts (no root needed)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from sandboxd.backends import backend_names, get_backend_class
from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.errors import InvalidSpec
from sandboxd.backends.local import log_budget, logfile, network_pool, protocol
from sandboxd.backends.local import network as network_module
from sandboxd.backends.local.cgroups import detect
from sandboxd.backends.local.network import Lease, NetworkError, NetworkManager
from sandboxd.backends.local.network_pool import PreparedNetworks
from sandboxd.backends.local.spawn import exit_code_from_status

MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
CGROUP_V1 = "9:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n"


def test_cgroup_v1_detection(tmp_path: Path) -> None:
    (tmp_path / "mi").write_text(MOUNTINFO_V1)
    (tmp_path / "cg").write_text(CGROUP_V1)
    layout = detect(str(tmp_path / "cg"), str(tmp_path / "mi"))
    assert layout.version == 1
    assert layout.bases["memory"] == "/sys/fs/cgroup/memory/process_api/abc"
    assert layout.bases["cpu"] == "/sys/fs/cgroup/cpu"


def test_cgroup_v2_detection(tmp_path: Path) -> None:
    root = tmp_path / "cgroup2"
    (root / "system.slice/runner.service").mkdir(parents=True)
    (root / "system.slice/runner.service/cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "mi").write_text(f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "cg").write_text("0::/system.slice/runner.service\n")
    layout = detect(str(tmp_path / "cg"), str(tmp_path / "mi"))
    assert layout.version == 2
    assert layout.bases["unified"] == f"{root}/system.slice/runner.service"


def test_log_records_survive_partial_writes() -> None:
    data = logfile.encode_record("stdout", b"a\nb", 1.5) + logfile.encode_record(
        "stderr", b"c", 2.0
    )
    records, used = logfile.parse(data + b"3.0 o 10\npart")
    assert records == [logfile.Record(1.5, "stdout", b"a\nb"), logfile.Record(2.0, "stderr", b"c")]
    assert used == len(data)


def test_log_writer_limit(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    writer = logfile.LogWriter(fd, limit=64)
    for _ in range(10):
        writer.write("stdout", b"x" * 20)
    os.close(fd)
    records, _ = logfile.read_records(str(tmp_path / "log"))
    assert records[-1].data == logfile.TRUNCATION_NOTICE and len(records) < 10


def test_exit_codes() -> None:
    assert exit_code_from_status(3 << 8) == 3
    assert exit_code_from_status(9) == 137
    assert exit_code_from_status(15) == 143


def test_protocol_passes_fds() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    protocol.send(a, {"op": "x", "n": 1}, [w])
    msg, fds = protocol.recv(b)
    assert msg == {"op": "x", "n": 1} and len(fds) == 1
    os.write(fds[0], b"via passed fd")
    assert os.read(r, 100) == b"via passed fd"
    for fd in (r, w, *fds):
        os.close(fd)
    a.close()
    assert protocol.recv(b) == (None, [])
    b.close()


def test_network_rules_and_allocation(tmp_path: Path) -> None:
    mgr = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    lease = mgr.allocate("box")
    assert (lease.host_ip, lease.sandbox_ip) == ("10.99.0.5", "10.99.0.6")
    assert len(lease.host_if) <= 15 and Lease.from_json(lease.to_json()) == lease
    body = [f":{lease.chain} - [0:0]", f"-A {lease.chain} -d 1.2.3.0/24 -j ACCEPT"]
    add = mgr._rules(lease, True, body)
    assert f"-A {lease.chain} -d 1.2.3.0/24 -j ACCEPT" in add
    assert f"-A SBX-I-{lease.tag[0]} -i {lease.host_if}" in add  # in its bucket's chain
    builtin = ("INPUT", "FORWARD", "POSTROUTING")
    assert not [
        line
        for line in add.splitlines()
        if line.split()[1:2] and line.split()[1] in builtin and lease.host_if in line
    ]
    bucket = lease.tag[0]  # its group's jumps checked (hook_chains.py)
    jump = f"INPUT -i sbx{bucket}+ -m comment --comment sandboxd:hooks -j SBX-I-{bucket}"
    assert f"-C {jump}" in add and f"-D {jump}" not in add
    keys = [group.key for group in lease.hook_groups()]
    ahead = mgr._rules(lease, True, body, lifted=keys)  # made ahead: also put first again
    assert f"-D {jump}\n-I {jump}" in ahead
    assert f"-A SBX-N-0a6300 -s {lease.sandbox_ip}/32" in add  # its /24's nat chain
    remove = mgr._rules(lease, False)
    assert f"-X {lease.chain}" in remove and "-A " not in remove
    assert f"-D SBX-F-{lease.tag[0]} -i {lease.host_if}" in remove
    # A sandbox an earlier version made (its record names no hooks) keeps its hooks in
    # INPUT, FORWARD and POSTROUTING themselves, and they are removed from there.
    record = json.loads(lease.to_json())
    del record["hooks"]
    old = Lease.from_json(json.dumps(record))
    assert f"-D INPUT -i {old.host_if} " in mgr._rules(old, False)
    assert f"-D POSTROUTING -s {old.sandbox_ip}/32" in mgr._rules(old, False)
    other_backend = NetworkManager("k2", "10.99.0.0/24", ipam_dir=str(tmp_path))
    second = other_backend.allocate("other")
    assert second.index != lease.index  # the pool is shared host-wide
    mgr.release(lease)
    third = other_backend.allocate("third")
    assert third.index not in (lease.index, second.index)  # not reused at once


def test_a_recovered_lease_whose_claim_is_gone_is_claimed_again_in_its_owners_name(
    tmp_path: Path,
) -> None:
    """A runner recovering a sandbox whose claim file went missing makes it again naming
    the backend, the sandbox and the network's name, so that the backend's own listing, and
    any reaper after it, finds it; before, the file was made empty and no one ever could. A
    claim that is there is left as it is."""
    mgr = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    lease = mgr.allocate("p-prepared")  # made under one name, taken by a sandbox of another
    mgr.assign(lease, "box")
    kept = Path(mgr.ipam, str(lease.index)).read_bytes()
    mgr.claim(lease, "box")
    assert Path(mgr.ipam, str(lease.index)).read_bytes() == kept
    mgr.release(lease)  # gone under it (by a crash, by hand)
    restarted = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    restarted.claim(lease, "box")
    assert restarted.claims() == {lease.index: "box"}
    assert [(found.index, found.tag) for found in restarted.claimed_leases()] == [
        (lease.index, lease.tag)
    ]
    assert restarted.claimed_leases(spare={"box"}) == []


def test_networks_made_ahead_never_join_a_full_hook_bucket(tmp_path: Path) -> None:
    """A network made ahead joins a hook bucket in use that has room; with the only bucket
    in use full, it opens another. Before, a name drawn with no bucket having room was taken
    whatever its bucket, and one in sixteen joined the full one (a CI run saw it twice in a
    row, so a bucket grew past ``BUCKET_ROOM``)."""
    mgr = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    mgr._members["filter:d"] = {f"t{n}" for n in range(network_pool.BUCKET_ROOM)}
    pool = PreparedNetworks(mgr, 0)
    assert "d" not in {mgr.tag_for(pool._holder_name())[0] for _ in range(500)}
    mgr._members["filter:3"] = {"t-with-room"}
    assert {mgr.tag_for(pool._holder_name())[0] for _ in range(200)} == {"3"}


def test_allocation_goes_on_after_the_last_subnet_and_wraps_around(tmp_path: Path) -> None:
    """Each allocation looks after the last one (no scan of every held subnet from the
    first), a subnet given back is handed out only once the search wraps around to it, and
    a pool with every subnet claimed says so."""
    mgr = NetworkManager("k", "10.99.0.0/27", ipam_dir=str(tmp_path))  # subnets 1..7
    leases = [mgr.allocate(f"box{n}") for n in range(4)]
    assert [lease.index for lease in leases] == [1, 2, 3, 4]
    mgr.release(leases[1])
    assert mgr.allocate("box4").index == 5  # index 2 is free, but the search goes on
    mgr.release(leases[0])
    assert [mgr.allocate(f"box{n}").index for n in (5, 6, 7)] == [6, 7, 1]  # wrapped
    assert mgr.allocate("box8").index == 2
    with pytest.raises(NetworkError, match="exhausted"):
        mgr.allocate("box9")
    restarted = NetworkManager("k", "10.99.0.0/27", ipam_dir=str(tmp_path))
    mgr.release(mgr.lease_at(6, "x"))
    assert restarted.allocate("box10").index == 6  # a new process starts from the first


def test_network_spec_validation() -> None:
    with pytest.raises(InvalidSpec):
        NetworkSpec(egress=EgressType.INTERNET, cidrs=("10.0.0.0/8",))
    with pytest.raises(InvalidSpec):
        NetworkSpec(egress=EgressType.ALLOWLIST, cidrs=("nope",))
    with pytest.raises(InvalidSpec):
        NetworkSpec(exposed_ports=(80,))


def test_catalog() -> None:
    assert "local" in backend_names()
    assert get_backend_class("local").name == "local"
    with pytest.raises(KeyError, match="known: local"):
        get_backend_class("nope")


def test_cgroup_v2_manager_on_a_fake_tree(tmp_path: Path) -> None:
    from sandboxd.backends.local.cgroups import CgroupManager, Layout

    base = tmp_path / "runner.service"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("")
    mgr = CgroupManager("sandboxd-x", Layout(2, {"unified": str(base)}))
    (base / "sandboxd-x").mkdir()
    (base / "sandboxd-x" / "cgroup.subtree_control").write_text("")
    cg = mgr.create("box")
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    cg.set_limits(cpu_millicores=500, memory_bytes=1 << 20, pids_max=7)
    box = base / "sandboxd-x" / "box"
    assert (box / "cpu.max").read_text() == "50000 100000"
    assert (box / "memory.max").read_text() == str(1 << 20)
    assert (box / "pids.max").read_text() == "7"
    assert cg.procs_files() == [str(box / "cgroup.procs")]


def _ended_log(sandboxes: Path, name: str, size: int) -> Path:
    (sandboxes / name).mkdir(parents=True)
    (sandboxes / name / log_budget.EXIT_FILE).write_text("{}")
    log = sandboxes / name / log_budget.LOG_FILE
    log.write_bytes(b"x" * size)
    return log


def test_a_closing_log_budget_runs_its_pending_check_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check poked within the interval waits for it; at shutdown it runs at once (a
    runner's stop used to wait up to 2 s for it), and nothing runs after close()."""
    monkeypatch.setattr(log_budget, "INTERVAL_SECONDS", 3600.0)
    sandboxes = tmp_path / "sandboxes"
    _ended_log(sandboxes, "first", 600)

    async def scenario() -> Path:
        keeper = log_budget.BudgetKeeper(sandboxes, budget_bytes=1000)
        keeper.poke()  # the first check runs at once: 600 bytes fit
        await keeper.settle()
        later = _ended_log(sandboxes, "later", 600)  # now 1,200 bytes: over the budget
        keeper.poke()  # within the interval: this check waits (an hour, here)
        await asyncio.wait_for(keeper.close(), 30)
        return later

    later = asyncio.run(scenario())
    first = sandboxes / "first" / log_budget.LOG_FILE
    assert log_budget.EVICTED_NOTICE.strip() in first.read_bytes()  # the oldest went
    assert later.read_bytes() == b"x" * 600


def test_a_hook_group_repair_never_takes_a_jump_out(tmp_path: Path) -> None:
    """Between two transactions a jump taken out leaves the sandboxes behind it unfiltered,
    so the repair only checks each jump and puts in the missing ones. The rule writer is a
    stand-in here that records what it is asked and says the INPUT jump is missing."""
    mgr = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    group = mgr.allocate("box").hook_groups()[0]
    asked: list[str] = []

    async def apply(rules: str, *, nice: bool = False, undo: str = "") -> None:
        asked.append(rules)
        if "-C INPUT" in rules:
            raise NetworkError("iptables-restore: line 2 failed")

    async def apply_quietly(rules: str, *, nice: bool = False) -> None:
        asked.append(rules)

    mgr.rules.apply = apply  # type: ignore[method-assign]
    mgr.rules.apply_quietly = apply_quietly  # type: ignore[method-assign]
    asyncio.run(mgr._repair_hook_chains(group, False))
    lines = [line for rules in asked for line in rules.splitlines()]
    assert not [line for line in lines if line.startswith("-D ")]
    assert [line for line in lines if line.startswith("-I ")] == [f"-I {group.jumps[0]}"]
    assert len([line for line in lines if line.startswith("-C ")]) == len(group.jumps)


def test_networks_made_ahead_put_a_groups_jumps_first_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    """Putting the jumps first again deletes them, and the commit then waits for the
    kernel's readers (40-125 ms a network made ahead, measured): done by every network made
    ahead, it kept the pool from keeping up with a client creating sandbox after sandbox,
    and every third create made its network on its own path (100-160 ms). Now once per
    ``LIFT_SECONDS`` per group, counted from when this process made the group (its jumps
    then went in first); a create's own add never does it. The rule writer is a stand-in
    that records what it is asked (no command runs)."""
    mgr = NetworkManager("k", "10.99.0.0/24", ipam_dir=str(tmp_path))
    bucket = mgr.tag_for("box-0")[0]  # one filter group (a bucket), one nat group (the /24)
    ids = [f"box-{n}" for n in range(10_000) if mgr.tag_for(f"box-{n}")[0] == bucket][:4]
    leases = [mgr.allocate(sandbox_id) for sandbox_id in ids]
    asked: list[str] = []

    async def apply(rules: str, *, nice: bool = False, undo: str = "") -> None:
        asked.append(rules)

    async def apply_quietly(rules: str, *, nice: bool = False) -> None:
        asked.append(rules)

    mgr.rules.apply = apply  # type: ignore[method-assign]
    mgr.rules.apply_quietly = apply_quietly  # type: ignore[method-assign]

    def deleted_jumps(lease: Lease, made_ahead: bool) -> list[str]:
        asked.clear()
        if made_ahead:
            asyncio.run(mgr.install_rules(lease, EgressType.INTERNET, (), ()))
        else:
            asyncio.run(mgr._add_rules(lease, EgressType.INTERNET, (), ()))
        lines = [line for rules in asked for line in rules.splitlines()]
        return [line for line in lines if line.startswith("-D ") and "sandboxd:hooks" in line]

    groups = leases[0].hook_groups()
    every_jump = sorted(f"-D {jump}" for group in groups for jump in group.jumps)
    # The first makes the groups, their jumps first ("-I"): nothing to lift for a while.
    assert deleted_jumps(leases[0], made_ahead=True) == []
    made = [line for rules in asked for line in rules.splitlines() if line.startswith("-I ")]
    assert sorted(made) == sorted(f"-I {j}" for g in groups if g.table == "filter" for j in g.jumps)
    assert deleted_jumps(leases[1], made_ahead=True) == []  # within the interval: checked
    assert deleted_jumps(leases[2], made_ahead=False) == []  # a create's own add: never
    for group in groups:  # the interval is over
        mgr._lifted[group.key] -= network_module.LIFT_SECONDS
    assert sorted(deleted_jumps(leases[3], made_ahead=True)) == every_jump


def test_the_log_budget_evicts_ended_logs_oldest_first_and_never_a_running_one(
    tmp_path: Path,
) -> None:
    """Within the budget nothing is touched; over it, ended sandboxes' logs go oldest end
    first until the rest fit, and a running sandbox's log (no exit.json) stays whole."""
    sandboxes = tmp_path / "sandboxes"
    old, newer = _ended_log(sandboxes, "old", 600), _ended_log(sandboxes, "newer", 600)
    os.utime(sandboxes / "old" / log_budget.EXIT_FILE, (1_000, 1_000))  # ended first
    (sandboxes / "running").mkdir()
    running = sandboxes / "running" / log_budget.LOG_FILE
    running.write_bytes(b"r" * 2000)
    (sandboxes / "no-log").mkdir()  # a sandbox being made: no log yet
    assert log_budget.enforce(sandboxes, budget_bytes=3200) == []
    assert old.read_bytes() == newer.read_bytes() == b"x" * 600
    assert log_budget.enforce(sandboxes, budget_bytes=2900) == [old]
    assert log_budget.EVICTED_NOTICE.strip() in old.read_bytes()
    assert newer.read_bytes() == b"x" * 600 and running.read_bytes() == b"r" * 2000
    evicted = log_budget.enforce(sandboxes, budget_bytes=100)  # cannot fit: all ended go
    assert evicted == [newer] and running.read_bytes() == b"r" * 2000


def test_the_zygote_makes_nothing_ahead_during_the_quiet_time_after_a_spawn() -> None:
    """Spares and namespaces made ahead wait until ``QUIET_AFTER_SPAWN_SECONDS`` after the
    last spawn (they competed with the sandbox just handed out for the CPU); a message is
    still served at once, and a zygote with nothing to make ahead only checks now and then
    whether it was abandoned. (Measured by ``bench/paired.py``: creates without a network
    0.86-0.88, with egress 0.92-0.99, of the time before.)"""
    from sandboxd.backends.local.zygote import (
        ABANDONED_CHECK_SECONDS,
        QUIET_AFTER_SPAWN_SECONDS,
        idle_wait,
    )

    spawned = 1000.0
    quiet_until = spawned + QUIET_AFTER_SPAWN_SECONDS
    assert idle_wait(True, quiet_until, spawned) == pytest.approx(QUIET_AFTER_SPAWN_SECONDS)
    assert 0 < idle_wait(True, quiet_until, spawned + QUIET_AFTER_SPAWN_SECONDS / 2) < 0.01
    assert idle_wait(True, quiet_until, quiet_until) == 0
    assert idle_wait(True, quiet_until, quiet_until + 5) == 0
    assert idle_wait(False, quiet_until, spawned) == ABANDONED_CHECK_SECONDS


def test_waiting_on_a_socket_watches_its_number_and_lets_go_of_it() -> None:
    """``wait_readable`` of a socket returns once it has data and leaves nothing watched
    (it watches the descriptor number: asyncio formats a socket's address into the error it
    builds for every lookup of an object it does not watch yet, on each exec's path)."""
    from sandboxd.backends.local import process

    async def body() -> None:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        with left, right:
            left.setblocking(False)
            waiting = asyncio.ensure_future(process.wait_readable(left))
            await asyncio.sleep(0)
            assert loop._selector.get_map()[left.fileno()].fileobj == left.fileno()  # type: ignore[attr-defined]
            assert not waiting.done()
            right.send(b"x")
            await asyncio.wait_for(waiting, 5)
            assert left.fileno() not in loop._selector.get_map()  # type: ignore[attr-defined]

    asyncio.run(body())


def test_an_exec_sessions_reader_ends_at_the_exit_and_when_the_session_is_closed() -> None:
    """A reader whose pipes have all ended waits for the exit code, and ends when it comes,
    or when the session is closed without one (the relay closes it after the client went
    away). Before 39e107e a reader still waiting at such a close spun on the finished exit
    future and held the event loop for good (the relay cancels its reader before it closes,
    so no caller did)."""
    from sandboxd.backends.local import process

    async def session_with_ended_pipes() -> tuple[process.LocalExecSession, socket.socket]:
        agent, runner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        runner.setblocking(False)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        os.write(out_w, b"said")
        for fd in (out_w, err_w, in_r):
            os.close(fd)
        session = process.LocalExecSession(
            runner, stdin=in_w, outputs={out_r: "stdout", err_r: "stderr"}, tty=False
        )
        return session, agent

    async def read_all(session: process.LocalExecSession) -> list[bytes]:
        return [chunk.data async for chunk in session]

    async def body() -> None:
        session, agent = await session_with_ended_pipes()
        with agent:
            reader = asyncio.ensure_future(read_all(session))
            await asyncio.sleep(0.05)  # both pipes read to their end; the exit is to come
            assert not reader.done()
            protocol.send(agent, {"exit": 3}, [])
            assert await asyncio.wait_for(reader, 5) == [b"said"]
            assert await session.wait() == 3
            await session.close()

        session, agent = await session_with_ended_pipes()
        with agent:
            reader = asyncio.ensure_future(read_all(session))
            await asyncio.sleep(0.05)
            assert not reader.done()
            # The agent never answers the kill that close() sends first: close() gives up
            # after its 5 s and ends the session without an exit code.
            await asyncio.wait_for(session.close(), 15)
            assert await asyncio.wait_for(reader, 5) == [b"said"]
            assert await session.wait() == process.KILLED_WITH_SANDBOX
            assert protocol.recv(agent)[0] == {"signal": 9}  # the kill it was asked for

    asyncio.run(body())
