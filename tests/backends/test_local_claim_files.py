"""Subnet and user id range claims appear whole (``claim_files.py``): a runner killed while
taking one leaves a claim that names it, which the orphan sweep can give back, never an
empty one."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from sandboxd.backends.local import claim_files
from sandboxd.backends.local import network as network_module
from sandboxd.backends.local.claim_files import ClaimWriter
from sandboxd.backends.local.network import NetworkManager
from sandboxd.backends.local.userns import IdRangePool

POOL = "10.99.0.0/24"


def claims_in(ipam: Path) -> dict[str, str]:
    """Every file of the pool's claim directory, by name, with its content."""
    return {path.name: path.read_text() for path in (ipam / "10.99.0.0_24").iterdir()}


@pytest.mark.parametrize("where", ["allocate", "claim"])
def test_a_runner_killed_while_taking_a_subnet_leaves_a_claim_that_names_it(
    tmp_path: Path, where: str
) -> None:
    """The runner process is SIGKILLed right after the claim is made: in ``allocate`` in
    its check for a leftover interface with the subnet's address, in ``claim`` (a recovered
    lease claimed again) as soon as the file is in place. Before,
    ``allocate`` made the claim empty and wrote it after that check, and a kill there left
    an empty claim that no reaper could give back: the subnet stayed taken until reboot."""
    pid = os.fork()
    if pid == 0:  # the runner: dies in the middle of taking the subnet
        try:
            manager = NetworkManager("k", POOL, ipam_dir=str(tmp_path))
            if where == "allocate":
                network_module._on_this_host = lambda _address: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[assignment]
                manager.allocate("sb-x")
            else:
                real_place = ClaimWriter.place

                def place_then_die(self: ClaimWriter, path: str) -> bool:
                    placed = real_place(self, path)
                    os.kill(os.getpid(), signal.SIGKILL)
                    return placed

                ClaimWriter.place = place_then_die  # type: ignore[method-assign]
                manager.claim(manager.lease_at(3, manager.tag_for("sb-y")), "sb-y")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if where == "allocate":
        assert claims_in(tmp_path) == {"1": "k sb-x\n"}
        assert NetworkManager("k", POOL, ipam_dir=str(tmp_path)).claims() == {1: "sb-x"}
    else:
        tag = NetworkManager("k", POOL, ipam_dir=str(tmp_path)).tag_for("sb-y")
        assert claims_in(tmp_path) == {"3": f"k sb-y {tag}\n"}
        assert NetworkManager("k", POOL, ipam_dir=str(tmp_path)).claims() == {3: "sb-y"}


def test_a_taken_name_is_left_as_it_is_and_the_next_one_is_tried(tmp_path: Path) -> None:
    """Two backends share the pool: a name another holds is never overwritten, and one
    writer's line goes to the first free name, whole."""
    first = NetworkManager("k1", POOL, ipam_dir=str(tmp_path))
    second = NetworkManager("k2", POOL, ipam_dir=str(tmp_path))
    assert first.allocate("sb-a").index == 1
    assert second.allocate("sb-b").index == 2
    assert first.allocate("sb-c").index == 3
    assert claims_in(tmp_path) == {"1": "k1 sb-a\n", "2": "k2 sb-b\n", "3": "k1 sb-c\n"}
    with ClaimWriter(str(tmp_path), "k3 sb-d\n") as writer:
        assert not writer.place(str(tmp_path / "10.99.0.0_24" / "1"))
        assert writer.place(str(tmp_path / "10.99.0.0_24" / "4"))
        assert writer.place(str(tmp_path / "10.99.0.0_24" / "5"))  # a new unnamed file
    assert claims_in(tmp_path)["1"] == "k1 sb-a\n"
    assert claims_in(tmp_path)["4"] == claims_in(tmp_path)["5"] == "k3 sb-d\n"


@pytest.mark.parametrize("missing", ["O_TMPFILE", "/proc"])
def test_without_unnamed_files_claims_are_made_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """A filesystem without ``O_TMPFILE``, or a host without ``/proc``: an exclusive
    create written at once."""
    real_open = os.open

    def without(path: str, flags: int, mode: int = 0o777) -> int:
        if missing == "O_TMPFILE" and flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no unnamed files here")
        if missing == "/proc" and path == "/proc/self/fd":
            raise FileNotFoundError(errno.ENOENT, "no /proc here", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(claim_files.os, "open", without)
    manager = NetworkManager("k", POOL, ipam_dir=str(tmp_path))
    assert [manager.allocate(f"sb-{i}").index for i in range(3)] == [1, 2, 3]
    assert claims_in(tmp_path) == {"1": "k sb-0\n", "2": "k sb-1\n", "3": "k sb-2\n"}


def test_a_process_killed_while_taking_an_id_range_leaves_a_claim_that_names_it(
    tmp_path: Path,
) -> None:
    """User id ranges are claimed the same way: killed as soon as the claim is in place,
    the process leaves it naming its owner and sandbox (``IdRangePool.claims`` reads it),
    and the next allocation takes the next slot."""
    claims = tmp_path / "idmap"
    pid = os.fork()
    if pid == 0:
        try:
            real_place = ClaimWriter.place

            def place_then_die(self: ClaimWriter, path: str) -> bool:
                placed = real_place(self, path)
                if placed:
                    os.kill(os.getpid(), signal.SIGKILL)
                return placed

            ClaimWriter.place = place_then_die  # type: ignore[method-assign]
            IdRangePool("owner-a", slots=4, claim_dir=str(claims)).allocate("sb-1")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert {p.name: p.read_text() for p in claims.iterdir()} == {"0": "owner-a sb-1\n"}
    pool = IdRangePool("owner-a", slots=4, claim_dir=str(claims))
    assert [(ids.slot, label) for ids, label in pool.claims()] == [(0, "sb-1")]
    assert pool.allocate("sb-2").slot == 1
