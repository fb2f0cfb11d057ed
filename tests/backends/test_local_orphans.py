"""A backend killed for good, its data directory deleted: the next one on the host cleans up.

What it made ahead of need (ready networks, prepared id ranges) belonged to its process;
``owners.py`` tells a dead owner from a live one by a lock the kernel drops when the process
dies, and ``orphans.py`` takes back what a dead one left. Its sandboxes are ended only once
its data directory is gone too (nobody can come back for them then). The attacks: a live
backend's things are never touched, nor the sandboxes of a dead one whose data directory
is still there; a reaper and a returning owner never run at once. Real namespaces, veths,
rules, claims, cgroups and sandboxes on this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.cgroups import detect
from sandboxd.backends.local.orphans import Reaped, reap_orphans
from sandboxd.backends.local.owners import OwnerLock, orphaned, other_keys
from sandboxd.backends.local.userns import IDMAP_DIR
from sandboxd.images import ImageStore
from tests.support.faults import wait_until
from tests.support.host_network import link_names

from .image_refs import BUSYBOX

OWNERS = "/run/sandboxd/owners"

# A backend in a process of its own: creates one sandbox with egress (so networks are made
# ahead for that policy) and keeps a second one running; waits until a network and an id
# range are ready, says what it holds, and idles until it is killed. Its sandboxes' ids
# start with a prefix of its own (argv[3]): claims are found by the id they name, and two
# such children on other workers both had "orphan-2" (one test then saw the other's).
CHILD = """
import asyncio, json, sys
from pathlib import Path
from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore

async def main():
    backend = LocalBackend(Path(sys.argv[1]) / "backend", images=ImageStore(sys.argv[2]))
    harness = Harness(backend, "busybox:latest", None, lambda: backend, prefix=sys.argv[3])
    internet = NetworkSpec(egress=EgressType.INTERNET)
    async with harness.sandbox(network=internet):
        pass
    async with harness.sandbox(network=internet) as sid:
        async with asyncio.timeout(60):
            while len(backend._nets) < 1 or len(backend._ranges.ready) < 1:
                await asyncio.sleep(0.02)
        rec = backend._records[sid]
        print(json.dumps({
            "key": backend._key,
            "tags": [r.lease.tag for r in backend._nets._ready],
            "slots": [r.slot for r in backend._ranges.ready],
            "zygote": backend._zygote._proc.pid,
            "sandbox": {
                "id": sid,
                "agent": rec.agent_pid,
                "keeper": rec.keeper_pid,
                "tag": rec.lease.tag,
                "cgroups": rec.cgroup.unique_dirs,
            },
        }), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _backend_in_a_process(data_dir: Path, image_store: ImageStore) -> subprocess.Popen[str]:
    """``CHILD`` on ``data_dir``: it prints what it holds, then idles until killed."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(image_store.data_dir), _unique_prefix()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _unique_prefix() -> str:
    """A sandbox id prefix no other test (or worker) uses: ``orphan-<hex>-``."""
    return f"orphan-{secrets.token_hex(4)}-"


def _claims_naming(text: str) -> list[str]:
    found = []
    for root in (Path("/run/sandboxd/ipam"), Path(IDMAP_DIR)):
        for path in root.rglob("*") if root.is_dir() else ():
            try:
                if path.is_file() and text in path.read_text():
                    found.append(str(path))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _holder(
    tmp_path: Path, key: str, owners: str, data_dir: str | None = None
) -> subprocess.Popen[str]:
    """A process that holds ``key``'s owner lock (naming ``data_dir``) until it is killed."""
    code = (
        "import asyncio, sys, time\n"
        "from sandboxd.backends.local.owners import OwnerLock\n"
        "asyncio.run(OwnerLock(sys.argv[1], sys.argv[2], sys.argv[3] or None).hold())\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, key, owners, data_dir or ""],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_dead_owner_is_told_from_a_live_one_and_its_lock_file_goes(tmp_path: Path) -> None:
    owners = str(tmp_path / "owners")
    holder = _holder(tmp_path, "live1234", owners)
    try:
        assert other_keys("mine0000", owners) == ["live1234"]
        with orphaned("live1234", owners) as gone:
            assert not gone  # alive: never reaped
        assert os.path.exists(os.path.join(owners, "live1234"))
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with orphaned("live1234", owners) as gone:
            assert gone  # the kernel dropped its lock with the process
        assert other_keys("mine0000", owners) == []  # and the reaper removed the file
        with orphaned("never-was", owners) as gone:
            assert not gone  # no file: nothing to say, nothing made
        assert other_keys("mine0000", owners) == []
    finally:
        holder.kill()
        holder.wait()


def test_only_an_owner_whose_data_dir_no_longer_exists_is_abandoned(tmp_path: Path) -> None:
    owners = str(tmp_path / "owners")
    data = tmp_path / "data"
    data.mkdir()
    holder = _holder(tmp_path, "dirs1234", owners, str(data))
    try:
        with orphaned("dirs1234", owners) as orphan:
            assert orphan is None  # alive
        holder.kill()
        holder.wait()
        with orphaned("dirs1234", owners) as orphan:
            assert orphan is not None and orphan.data_dir == str(data)
            assert not orphan.abandoned  # its runner may come back for its sandboxes
            orphan.keep = True
        assert other_keys("mine0000", owners) == ["dirs1234"]  # kept for the next look
        data.rmdir()
        with orphaned("dirs1234", owners) as orphan:
            assert orphan is not None and orphan.abandoned
        assert other_keys("mine0000", owners) == []
    finally:
        holder.kill()
        holder.wait()
    # What no owner wrote proves nothing: a relative path, garbage, an empty file.
    Path(owners).mkdir(exist_ok=True)
    for key, content in (
        ("rel00000", b'{"data_dir": "gone/elsewhere"}'),
        ("bin00000", b"\xff\xfe{not json"),
        ("nul00000", b'{"data_dir": "/tmp/x\\u0000y"}'),
        ("emp00000", b""),
    ):
        Path(owners, key).write_bytes(content)
        with orphaned(key, owners) as orphan:
            assert orphan is not None and orphan.data_dir is None and not orphan.abandoned


def test_an_owner_that_returns_waits_for_the_reaper_and_holds_a_fresh_file(
    tmp_path: Path,
) -> None:
    owners = str(tmp_path / "owners")
    holder = _holder(tmp_path, "back5678", owners)
    holder.kill()
    holder.wait()

    async def scenario() -> None:
        returning = OwnerLock("back5678", owners)
        with orphaned("back5678", owners) as gone:
            assert gone
            waiting = asyncio.ensure_future(returning.hold())
            await asyncio.sleep(0.2)
            assert not waiting.done()  # never while its leftovers are being taken back
        await asyncio.wait_for(waiting, 10)
        assert returning.held
        with orphaned("back5678", owners) as gone:
            assert not gone  # it holds the file that is there now, not the removed one
        returning.release()
        assert other_keys("mine0000", owners) == []  # a clean stop takes its file along

    asyncio.run(scenario())


def test_a_killed_backend_is_reaped_and_its_sandboxes_ended_once_its_data_dir_is_gone(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    dead_dir = tmp_path / "dead"
    child = _backend_in_a_process(dead_dir, image_store)
    info: dict[str, Any] = {}
    witnesses: list[LocalBackend] = []

    async def start_backend(name: str) -> LocalBackend:
        backend = LocalBackend(tmp_path / name / "backend", images=image_store)
        witnesses.append(backend)
        await backend._ready()  # type: ignore[attr-defined]  # what its first create does
        return backend

    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        key = str(info["key"])
        tags = [str(t) for t in info["tags"]]
        ready_links = {f"sbx{tag}" for tag in tags}
        running = info["sandbox"]
        running_link = f"sbx{running['tag']}"
        group = f"sandboxd-{key}"
        assert ready_links <= link_names() and _claims_naming(f"{group} <prepared>")
        assert running_link in link_names() and _alive(running["agent"])

        # A backend that starts while it lives leaves everything of it alone.
        aio.run(start_backend("witness"))
        assert ready_links <= link_names() and running_link in link_names()
        assert _claims_naming(f"{key} prepared:") and _claims_naming(f"{group} <prepared>")
        assert os.path.exists(os.path.join(OWNERS, key))

        child.send_signal(signal.SIGKILL)
        child.wait()
        # A sandbox's claim of the dead key, as a runner that will come back leaves it.
        kept = Path(IDMAP_DIR) / "16382"  # the last slot: free unless 16,000 are in use
        assert not kept.exists()
        kept.write_text(f"{group} sb-kept\n")

        # Dead, its data directory still there: what it made ahead goes, its sandboxes
        # (which its runner may come back for) and their claims stay.
        aio.run(start_backend("successor"))
        # Its start sweeps; a backend of a test beside this one may be sweeping the same
        # owner at that moment (it then holds the lock): whoever does, it is done soon.
        wait_until(
            "what it made ahead to go",
            lambda: (
                not ready_links & link_names()
                and _claims_naming(f"{key} prepared:") == []
                and _claims_naming(f"{group} <prepared>") == []
            ),
            30,
        )
        assert kept.read_text() == f"{group} sb-kept\n"
        assert _alive(running["agent"]) and running_link in link_names()
        assert _claims_naming(f"{key} {running['id']}")
        assert all(os.path.isdir(d) for d in running["cgroups"])
        assert os.path.exists(os.path.join(OWNERS, key))  # for whoever looks next
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not [tag for tag in tags if f"sbx{tag}" in links]
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert not [tag for tag in tags if tag in rules] and running["tag"] in rules

        # Its data directory deleted: nobody can reach, stop or recover that sandbox now.
        shutil.rmtree(dead_dir)
        aio.run(start_backend("last"))
        wait_until(
            "the abandoned sandbox to end, its network, claims and lock file to go",
            lambda: (
                not _alive(running["agent"])
                and running_link not in link_names()
                and _claims_naming(f"{key} ") == []
                and _claims_naming(f"{group} ") == []
                and not kept.exists()
                and not os.path.exists(os.path.join(OWNERS, key))
            ),
            30,
        )
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert running["tag"] not in rules
        assert not [d for d in running["cgroups"] if os.path.isdir(d)]
        assert not [base for base in detect().bases.values() if os.path.isdir(f"{base}/{group}")]
        # Its keeper and zygote, reachable by nobody now, end on their own.
        wait_until("its keeper to exit", lambda: not _alive(running["keeper"]), 30)
        zygote = int(info["zygote"])
        wait_until(f"the abandoned zygote {zygote} to exit", lambda: not _alive(zygote), 30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in (info.get("sandbox", {}).get("agent"), info.get("zygote")):
            if pid and _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        (Path(IDMAP_DIR) / "16382").unlink(missing_ok=True)

        async def close_all() -> None:
            for backend in witnesses:
                await backend.close()

        aio.run(close_all())  # on the loop they ran on: their zygotes are shut down


def test_a_backend_closed_with_sandboxes_running_keeps_its_lock_file_for_the_reaper(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A clean stop leaves its sandboxes running for the next start; should its data
    directory be deleted instead, the next backend on the host still finds and ends them."""
    gone_dir = tmp_path / "closed"
    backend = LocalBackend(gone_dir / "backend", images=image_store)
    harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix=f"cl{os.getpid()}-")
    successor = LocalBackend(tmp_path / "next" / "backend", images=image_store)
    lock = os.path.join(OWNERS, backend._key)  # type: ignore[attr-defined]
    agent = 0

    async def leave_one_running() -> int:
        spec = harness.spec()
        await backend.create(spec)
        await backend.start(spec.sandbox_id)
        pid = int(backend._records[spec.sandbox_id].agent_pid)  # type: ignore[attr-defined]
        zygotes.append(backend._zygote._proc.pid)  # type: ignore[attr-defined]
        await backend.close()
        return pid

    zygotes: list[int] = []
    try:
        agent = aio.run(leave_one_running())
        assert _alive(agent) and os.path.exists(lock)
        shutil.rmtree(gone_dir)
        aio.run(successor._ready())  # type: ignore[attr-defined]
        zygotes.append(successor._zygote._proc.pid)  # type: ignore[attr-defined]
        wait_until("the abandoned sandbox to end", lambda: not _alive(agent), 30)
        assert not os.path.exists(lock)
        # The closed backend's zygote, its run directory gone and its keeper ended, exits.
        wait_until("the abandoned zygote to exit", lambda: not _alive(zygotes[0]), 30)
    finally:
        if agent and _alive(agent):
            os.kill(agent, signal.SIGKILL)
        aio.run(successor.close())
        # close() kills a zygote that misses its shutdown (supervisor.SHUTDOWN_TIMEOUT);
        # a failed run can still leave the closed backend's: ended here by pid.
        for pid in zygotes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_nothing_of_an_abandoned_owner_is_released_while_a_sandbox_of_it_survives(
    tmp_path: Path,
) -> None:
    """Ids and networks go only once every sandbox of the owner is gone; until then the
    lock file stays for the next start. ``end_sandboxes`` is the backend's own callback;
    here a stand-in fails as the kernel does when a cgroup cannot be emptied."""
    owners, idmap = tmp_path / "owners", tmp_path / "idmap"
    owners.mkdir()
    idmap.mkdir()
    key = "stuck123"
    (owners / key).write_text(json.dumps({"data_dir": str(tmp_path / "deleted")}))
    claim = idmap / "7"
    claim.write_text(f"sandboxd-{key} sb-still-running\n")
    calls: list[str] = []

    async def cannot_end(group: str) -> int:
        calls.append(group)
        raise OSError(16, "Device or resource busy")

    async def ends(group: str) -> int:
        calls.append(group)
        return 1

    async def sweep(end: Any) -> Reaped:
        return await reap_orphans(
            "mine0000",
            "10.215.0.0/24",  # a pool nobody claims from: no network to tear down
            owners_dir=str(owners),
            idmap_dir=str(idmap),
            end_sandboxes=end,
        )

    first = asyncio.run(sweep(cannot_end))
    assert calls == [f"sandboxd-{key}"] and first.sandboxes == 0 and first.ranges == 0
    assert claim.exists() and (owners / key).exists()
    second = asyncio.run(sweep(ends))
    assert calls[-1] == f"sandboxd-{key}" and second.sandboxes == 1 and second.ranges == 1
    assert not claim.exists() and not (owners / key).exists()


def test_a_running_backend_sweeps_again_for_owners_abandoned_since_it_started(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A dead runner's data directory deleted while this one runs: found without a restart."""
    backend = LocalBackend(
        tmp_path / "sweeper" / "backend", images=image_store, orphan_sweep_seconds=0.2
    )
    key = f"sw{os.getpid() % 1000000:06d}"
    lock = Path(OWNERS) / key
    claim = Path(IDMAP_DIR) / "16381"  # next to the last slot: free unless 16,000 are in use
    try:
        aio.run(backend._ready())  # type: ignore[attr-defined]  # the first sweep is done
        assert not claim.exists()
        claim.write_text(f"sandboxd-{key} sb-abandoned\n")
        lock.write_text(json.dumps({"data_dir": str(tmp_path / "never-there")}))

        async def swept() -> None:
            async with asyncio.timeout(30):
                while claim.exists() or lock.exists():
                    await asyncio.sleep(0.05)

        aio.run(swept())
    finally:
        claim.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
        aio.run(backend.close())


def test_a_backend_closed_while_preparing_id_ranges_gives_every_range_back(
    aio: asyncio.Runner, image_store: ImageStore, tmp_path: Path
) -> None:
    """A clean stop removes the lock file, so nobody would ever reap a range left claimed:
    the one being prepared when ``close()`` cancels the refill must be given back too."""

    async def start_and_close(attempt: int) -> list[int]:
        backend = LocalBackend(tmp_path / f"closing-{attempt}", images=image_store)
        await backend._ready()  # type: ignore[attr-defined] # the refill starts
        await asyncio.sleep(0.001 * attempt)  # stop at different points of it
        await backend.close()
        left = backend._ids.claimed()  # type: ignore[attr-defined]
        for ids in left:  # so that a failure leaks nothing either
            backend._ids.release(ids)  # type: ignore[attr-defined]
        return [ids.slot for ids in left]

    for attempt in range(4):
        assert aio.run(start_and_close(attempt)) == [], attempt


def test_a_data_dir_made_anew_at_the_same_path_ends_the_sandboxes_nobody_can_reach(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A runner killed, its data directory deleted and created again, the runner restarted:
    the backend has the same name but no record of the old sandbox, which nobody could
    reach, stop or recover any more. Its recovery ends it and frees what it held."""
    data_dir = tmp_path / "wiped"
    child = _backend_in_a_process(data_dir, image_store)
    info: dict[str, Any] = {}
    backend = LocalBackend(data_dir / "backend", images=image_store)
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        running = info["sandbox"]
        link = f"sbx{running['tag']}"
        assert _alive(running["agent"]) and link in link_names()
        child.send_signal(signal.SIGKILL)
        child.wait()
        shutil.rmtree(data_dir)
        (data_dir / "backend").mkdir(parents=True)  # the same path: the same backend name
        assert backend._key == info["key"]  # type: ignore[attr-defined]

        assert aio.run(backend.recover()) == []
        wait_until("the unreachable sandbox to end", lambda: not _alive(running["agent"]), 30)
        assert link not in link_names()
        assert _claims_naming(running["id"]) == []  # its network and its id range
        assert not [d for d in running["cgroups"] if os.path.isdir(d)]
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert running["tag"] not in rules
        # What a new sandbox needs still works, with the ids and network it freed.
        harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix="anew-")
        internet = NetworkSpec(egress=EgressType.INTERNET)

        async def one() -> bytes:
            async with harness.sandbox(network=internet) as sid:
                return (await run(harness, sid, ["echo", "fresh"])).stdout

        assert aio.run(one()) == b"fresh\n"
    finally:
        if child.poll() is None:
            child.kill()
        if info and _alive(info["sandbox"]["agent"]):
            os.kill(info["sandbox"]["agent"], signal.SIGKILL)
        aio.run(backend.close())
        if info:
            wait_until("its zygote to exit", lambda: not _alive(int(info["zygote"])), 30)


def test_a_dead_owner_keeps_its_lock_file_while_claims_of_its_sandboxes_are_left(
    tmp_path: Path,
) -> None:
    """A runner killed while it tore a sandbox down can leave that sandbox's id range
    claimed with no cgroup left. Its data directory still there, the claim is not the
    reaper's to give back (the runner may come back and release it from its record), but
    the lock file stays, so that the claim goes once the directory is deleted."""
    owners, idmap, data_dir = tmp_path / "owners", tmp_path / "idmap", tmp_path / "data"
    for d in (owners, idmap, data_dir):
        d.mkdir()
    key = "torn1234"
    (owners / key).write_text(json.dumps({"data_dir": str(data_dir)}))
    torn, prepared = idmap / "3", idmap / "4"
    torn.write_text(f"sandboxd-{key} sb-torn-down\n")
    prepared.write_text(f"sandboxd-{key} <prepared>\n")

    async def none_left(group: str) -> int:
        return 0

    async def sweep() -> Reaped:
        return await reap_orphans(
            "mine0000",
            "10.215.0.0/24",  # a pool nobody claims from: no network to tear down
            owners_dir=str(owners),
            idmap_dir=str(idmap),
            remove_group=lambda group: True,  # no cgroup of it is left
            end_sandboxes=none_left,
        )

    asyncio.run(sweep())
    assert not prepared.exists() and torn.exists()
    assert (owners / key).exists()  # it used to go here, and the claim with it for good
    shutil.rmtree(data_dir)
    asyncio.run(sweep())
    assert not torn.exists() and not (owners / key).exists()


def _zygotes_of(run_dir: Path) -> list[int]:
    """Pids of the zygotes serving ``run_dir`` (their command line names it).

    A zygote's fork (a keeper before it execs, a namespace helper) carries the same command
    line for a moment; it is told apart by its parent, which is a zygote.
    """
    named: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if cmdline.startswith("sandboxd-zygote") and str(run_dir) in cmdline:
                named[int(entry.name)] = ppid
    return sorted(pid for pid, ppid in named.items() if ppid not in named)


def test_work_made_ahead_never_starts_a_zygote(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A refill that comes due once the zygote was shut down (a backend closed, or let go by
    a runner that went away) gives up; it used to start a new zygote that nobody would ask
    to exit. A create still starts one."""
    backend = LocalBackend(tmp_path / "backend", images=image_store)
    run_dir = tmp_path / "backend"

    async def scenario() -> None:
        try:
            await backend._ready()  # type: ignore[attr-defined]
            [first] = _zygotes_of(run_dir)
            await backend._zygote.shutdown()  # type: ignore[attr-defined]
            wait_until("the zygote to exit", lambda: not _alive(first), 10)
            ranges = backend._ranges  # type: ignore[attr-defined]
            ranges.ready.clear()
            ranges.refill()
            await asyncio.wait_for(ranges._task, 10)
            assert _zygotes_of(run_dir) == []
            assert not ranges.ready  # nothing prepared
            h = Harness(backend, BUSYBOX, None, lambda: backend)
            async with h.sandbox() as sid:  # a create starts one
                assert (await run(h, sid, ["true"])).code == 0
                assert len(_zygotes_of(run_dir)) == 1
        finally:
            await backend.close()
        wait_until("no zygote left", lambda: _zygotes_of(run_dir) == [], 10)

    aio.run(asyncio.wait_for(scenario(), 60))


# A backend on a sandbox network pool of its own: makes networks ahead, then idles.
CHILD_ON_POOL = """
import asyncio, json, sys
from pathlib import Path
from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore

async def main():
    backend = LocalBackend(
        Path(sys.argv[1]) / "backend", images=ImageStore(sys.argv[2]), network_pool=sys.argv[3]
    )
    harness = Harness(backend, "busybox:latest", None, lambda: backend, prefix="orphan-pool-")
    async with harness.sandbox(network=NetworkSpec(egress=EgressType.INTERNET)):
        pass
    async with asyncio.timeout(60):
        while len(backend._nets) < 1:
            await asyncio.sleep(0.02)
    tags = [r.lease.tag for r in backend._nets._ready]
    print(json.dumps({"key": backend._key, "tags": tags, "zygote": backend._zygote._proc.pid}),
          flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_dead_backend_on_another_network_pool_is_reaped_too(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Claims are filed under their pool (``/run/sandboxd/ipam/<pool>``): a sweep of the
    sweeper's own pool alone never saw those of a dead backend on another pool, and dropped
    its lock file, so its networks made ahead stayed on the host for good."""
    pool, pool_dir = "10.214.64.0/24", Path("/run/sandboxd/ipam/10.214.64.0_24")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_ON_POOL, str(tmp_path / "dead"), str(image_store.data_dir),
         pool],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    successor: LocalBackend | None = None
    info: dict[str, Any] = {}
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        key, links = str(info["key"]), {f"sbx{tag}" for tag in info["tags"]}
        assert links and links <= link_names()
        assert [p.name for p in pool_dir.iterdir()], "no claim in the other pool"
        child.send_signal(signal.SIGKILL)
        child.wait()
        successor = LocalBackend(tmp_path / "successor" / "backend", images=image_store)
        aio.run(successor._ready())  # type: ignore[attr-defined]  # its start sweeps
        wait_until(
            "the dead backend's networks on the other pool to go",
            lambda: not links & link_names() and not list(pool_dir.iterdir()),
            30,
        )
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert not [tag for tag in info["tags"] if tag in rules]
        assert not os.path.exists(os.path.join(OWNERS, key))  # nothing of it is left to name
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        zygote = int(info.get("zygote", 0))  # its data directory is still there: it stays
        if zygote and _alive(zygote):
            os.kill(zygote, signal.SIGKILL)
            wait_until(f"the dead backend's zygote {zygote} to go", lambda: not _alive(zygote), 30)
        if successor is not None:
            aio.run(successor.close())
        with contextlib.suppress(OSError):
            pool_dir.rmdir()
