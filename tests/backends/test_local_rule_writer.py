"""One backend's firewall transactions (``rule_writer.py``), on this host's real iptables.

Each test works in chains of its own (``SBXRW<pid>-…``, never hooked into ``INPUT`` or
``FORWARD``, so no packet is ever judged by them) and removes them at the end. The
``iptables-restore`` the writer runs is the real one behind a wrapper that logs each run,
which is how the tests count transactions.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.local.host_commands import NetworkError
from sandboxd.backends.local.rule_writer import RuleWriter

PREFIX = f"SBXRW{os.getpid() % 100000}-"


def chain(n: int) -> str:
    return f"{PREFIX}{n}"


def add(n: int) -> str:
    return f"*filter\n:{chain(n)} - [0:0]\n-A {chain(n)} -j RETURN\nCOMMIT\n"


def remove(n: int) -> str:
    return f"*filter\n-F {chain(n)}\n-X {chain(n)}\nCOMMIT\n"


def ours() -> set[str]:
    """Our chains that exist now."""
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True)
    declared = (line for line in out.stdout.splitlines() if line.startswith(f":{PREFIX}"))
    return {line[1:].split()[0] for line in declared}


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A log with a line per ``iptables-restore`` run; our chains are removed afterwards."""
    real = shutil.which("iptables-restore")
    if os.geteuid() != 0 or real is None:
        pytest.skip("needs root and iptables")
    log = tmp_path / "runs.log"
    wrapper = tmp_path / "bin" / "iptables-restore"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho run >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    log.touch()
    try:
        yield log
    finally:
        for name in ours():
            subprocess.run(["iptables", "-w", "5", "-F", name], check=False)
            subprocess.run(["iptables", "-w", "5", "-X", name], check=False)


def count(log: Path) -> int:
    return len(log.read_text().splitlines())


def test_adds_asked_together_go_out_together_and_each_caller_learns_its_own_fate(
    runs: Path,
) -> None:
    async def scenario() -> None:
        writer = RuleWriter()
        await asyncio.gather(*(writer.apply(add(n)) for n in range(30)))
        assert ours() == {chain(n) for n in range(30)}
        # The first runs alone; the 29 asked while it ran go out as one.
        assert count(runs) <= 3, count(runs)
        # A bad part (a rule in a chain that does not exist) fails only its own caller.
        bad = "*filter\n-A SBXRW-NO-SUCH-CHAIN -j RETURN\nCOMMIT\n"
        got = await asyncio.gather(
            *(writer.apply(add(n)) for n in range(30, 35)),
            writer.apply(bad),
            return_exceptions=True,
        )
        assert got[:5] == [None] * 5 and isinstance(got[5], NetworkError)
        assert "line 2 failed" in str(got[5])  # its own transaction's line: run on its own
        assert ours() == {chain(n) for n in range(35)}
        await asyncio.gather(*(writer.remove(remove(n)) for n in range(35)))
        assert ours() == set()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_order_is_kept_and_a_cancelled_caller_leaves_nothing_behind(runs: Path) -> None:
    """A removal asked after an add runs after it; an add whose caller was cancelled before
    its turn is dropped; a removal runs even when its caller is cancelled."""

    async def scenario() -> None:
        writer = RuleWriter()
        first = asyncio.ensure_future(writer.apply(add(0)))  # runs at once
        await asyncio.sleep(0)
        dropped = asyncio.ensure_future(writer.apply(add(1)))  # waits for its turn ...
        await asyncio.sleep(0)
        dropped.cancel()  # ... and its caller goes away
        await first
        await asyncio.gather(dropped, return_exceptions=True)
        await asyncio.sleep(0.2)
        assert ours() == {chain(0)}  # the cancelled add never ran
        # An add and the rollback's removal asked right after it: never the other way round.
        await asyncio.gather(writer.apply(add(2)), writer.remove(remove(2)))
        assert ours() == {chain(0)}
        removing = asyncio.ensure_future(writer.remove(remove(0)))
        await asyncio.sleep(0)
        removing.cancel()
        await asyncio.gather(removing, return_exceptions=True)
        for _ in range(100):  # it runs anyway
            if not ours():
                break
            await asyncio.sleep(0.05)
        assert ours() == set()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_part_retried_after_a_merged_add_failed_in_nat_is_not_added_twice(runs: Path) -> None:
    """``iptables-restore`` commits each table on its own: a merged add that fails in its
    ``nat`` part has committed its ``filter`` part. Each part tried again on its own is undone
    first, so a good part's filter rule is there once, not twice; the bad part fails alone."""

    def part(n: int, nat_chain: str) -> tuple[str, str]:
        rule = f"-A {chain(0)} -s 10.99.{n}.1/32 -j RETURN"
        nat = f"-A {nat_chain} -s 10.99.{n}.1/32 -j RETURN"
        adds = f"*filter\n{rule}\nCOMMIT\n*nat\n{nat}\nCOMMIT\n"
        undoes = f"*filter\n{rule.replace('-A', '-D', 1)}\nCOMMIT\n*nat\n"
        return adds, undoes + f"{nat.replace('-A', '-D', 1)}\nCOMMIT\n"

    nat_chain = f"{PREFIX}nat"

    async def scenario() -> None:
        writer = RuleWriter()
        await writer.apply(add(0))  # our filter chain, with one rule
        await writer.apply(f"*nat\n:{nat_chain} - [0:0]\nCOMMIT\n")
        good, good_undo = part(1, nat_chain)
        bad, bad_undo = part(2, f"{PREFIX}no-such-nat-chain")
        first = asyncio.ensure_future(writer.apply(add(9)))  # runs alone; the two queue
        results = await asyncio.gather(
            writer.apply(good, undo=good_undo),
            writer.apply(bad, undo=bad_undo),
            return_exceptions=True,
        )
        await first
        assert results[0] is None and isinstance(results[1], NetworkError)
        rules = subprocess.run(["iptables", "-S", chain(0)], capture_output=True, text=True)
        assert rules.stdout.count("10.99.1.1/32") == 1, rules.stdout  # not twice
        nat = subprocess.run(["iptables", "-t", "nat", "-S", nat_chain], capture_output=True)
        assert nat.stdout.decode().count("10.99.1.1/32") == 1
        await writer.remove(bad_undo)  # its caller's part: the filter rule it left

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        subprocess.run(["iptables", "-t", "nat", "-F", nat_chain], check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", nat_chain], check=False)


@pytest.mark.timeout(60)
def test_transactions_run_in_the_order_asked_also_when_the_first_is_shielded(
    runs: Path,
) -> None:
    """A chain asked for (``apply_quietly``, shielded) just before another caller's add that
    jumps to it runs first. It was queued one step late, so the add ran first and failed
    (``Chain ... does not exist``): in a burst of creates, one create's hook group and the
    next create's add, whose failure then cost a second of retries and repairs."""

    async def scenario() -> None:
        writer = RuleWriter()
        make = f"*filter\n:{chain(1)} - [0:0]\nCOMMIT\n"
        use = f"*filter\n:{chain(2)} - [0:0]\n-A {chain(2)} -j {chain(1)}\nCOMMIT\n"
        await asyncio.gather(writer.apply_quietly(make), writer.apply(use))
        assert ours() == {chain(1), chain(2)}
        await asyncio.gather(writer.remove(remove(2)), writer.apply(add(3)))
        await writer.remove(remove(1))  # queued after the removal of the jump to it
        assert ours() == {chain(3)}

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_quiet_transactions_asked_together_run_as_one_and_a_failing_one_spoils_no_other(
    runs: Path,
) -> None:
    """Hook groups asked for at once (a burst's first creates) are one ``iptables-restore``
    run when none exists; when one exists already (``-N`` fails), the merged run is rolled
    back by the kernel and each runs alone: every other group is still made, and the one
    that failed fails quietly."""

    def make(n: int) -> str:
        return f"*filter\n-N {chain(n)}\n-A {chain(n)} -j RETURN\nCOMMIT\n"

    async def scenario() -> None:
        writer = RuleWriter()
        first = asyncio.ensure_future(writer.apply_quietly(make(0)))  # runs at once ...
        await asyncio.sleep(0)
        await asyncio.gather(first, *(writer.apply_quietly(make(n)) for n in range(1, 13)))
        assert ours() == {chain(n) for n in range(13)}
        assert count(runs) == 2, count(runs)  # ... and the 12 asked meanwhile as one

        before = count(runs)
        blocker = asyncio.ensure_future(writer.apply_quietly(make(20)))
        await asyncio.sleep(0)
        again = [make(n) for n in (21, 5, 22)]  # 5 exists: its -N fails
        await asyncio.gather(blocker, *(writer.apply_quietly(rules) for rules in again))
        assert ours() == {chain(n) for n in (*range(13), 20, 21, 22)}
        assert count(runs) - before == 1 + 1 + 3  # the blocker, the merged try, each alone
        out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True)
        assert out.stdout.count(f"-A {chain(5)} -j RETURN") == 1  # nothing added twice

    asyncio.run(scenario())


def test_a_removal_whose_command_cannot_start_says_so(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ``iptables-restore`` to start (a ``PATH`` without it: the start itself fails,
    as it does on a host out of memory or processes), ``remove`` answers False and the
    rules stay; once the command can start again, the same removal answers True and the
    chain is gone. Before, the first answered like a removal that ran, and its caller gave
    the network's claim back with the rules still on the host."""
    empty = tmp_path / "no-commands"
    empty.mkdir()
    usable = os.environ["PATH"]

    async def scenario() -> None:
        writer = RuleWriter()
        await writer.apply(add(60))
        monkeypatch.setenv("PATH", str(empty))
        removed = await writer.remove(remove(60))
        monkeypatch.setenv("PATH", usable)
        assert removed is False
        assert chain(60) in ours()
        assert await writer.remove(remove(60)) is True
        assert chain(60) not in ours()

    asyncio.run(asyncio.wait_for(scenario(), 60))
