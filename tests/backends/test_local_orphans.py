"""A backend killed for good, its data directory deleted: the next one on the host cleans up.

What it made ahead of need (ready networks, prepared id ranges) belonged to its process;
``owners.py`` tells a dead owner from a live one by a lock the kernel drops when the process
dies, and ``orphans.py`` takes back what a dead one left. The attacks: a live backend's
things are never touched, nor a sandbox's claims; a reaper and a returning owner never run
at once. Real namespaces, veths, rules, claims and cgroups on this host.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.cgroups import detect
from sandboxd.backends.local.network import NETNS_DIR
from sandboxd.backends.local.owners import OwnerLock, orphaned, other_keys
from sandboxd.backends.local.userns import IDMAP_DIR
from sandboxd.images import ImageStore
from tests.support.faults import wait_until

OWNERS = "/run/sandboxd/owners"

# A backend in a process of its own: creates one sandbox with egress (so networks are made
# ahead for that policy), waits until a network and an id range are ready, says what it
# holds, and idles until it is killed.
CHILD = """
import asyncio, json, sys
from pathlib import Path
from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore
from tests.support.faults import wait_until

async def main():
    backend = LocalBackend(Path(sys.argv[1]) / "backend", images=ImageStore(sys.argv[2]))
    harness = Harness(backend, "busybox:latest", None, lambda: backend, prefix="orphan-")
    async with harness.sandbox(network=NetworkSpec(egress=EgressType.INTERNET)):
        pass
    async with asyncio.timeout(60):
        while len(backend._nets) < 1 or len(backend._ranges.ready) < 1:
            await asyncio.sleep(0.02)
    print(json.dumps({
        "key": backend._key,
        "tags": [r.lease.tag for r in backend._nets._ready],
        "slots": [r.slot for r in backend._ranges.ready],
        "zygote": backend._zygote._proc.pid,
    }), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _netns() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


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


def _holder(tmp_path: Path, key: str, owners: str) -> subprocess.Popen[str]:
    """A process that holds ``key``'s owner lock until it is killed."""
    code = (
        "import asyncio, sys, time\n"
        "from sandboxd.backends.local.owners import OwnerLock\n"
        "asyncio.run(OwnerLock(sys.argv[1], sys.argv[2]).hold())\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, key, owners], stdout=subprocess.PIPE, text=True
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


def test_what_a_killed_backend_made_ahead_is_taken_back_by_the_next_one(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    dead_dir = tmp_path / "dead"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(dead_dir), str(image_store.data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    info: dict[str, object] = {}
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
        tags = [str(t) for t in info["tags"]]  # type: ignore[attr-defined]
        ready_netns = {f"sandboxd-{tag}" for tag in tags}
        group = f"sandboxd-{key}"
        assert ready_netns <= _netns() and _claims_naming(f"{group} <prepared>")

        # A backend that starts while it lives leaves everything of it alone.
        aio.run(start_backend("witness"))
        assert ready_netns <= _netns()
        assert _claims_naming(f"{key} prepared:") and _claims_naming(f"{group} <prepared>")
        assert os.path.exists(os.path.join(OWNERS, key))

        child.send_signal(signal.SIGKILL)
        child.wait()
        shutil.rmtree(dead_dir)  # nobody will ever start a backend for it again
        # A sandbox's claim of the dead key, as a runner that will come back leaves it:
        # the reaper must not take it (only what was made ahead).
        kept = Path(IDMAP_DIR) / "16382"  # the last slot: free unless 16,000 are in use
        assert not kept.exists()
        kept.write_text(f"{group} sb-kept\n")

        aio.run(start_backend("successor"))
        assert not ready_netns & _netns()
        assert _claims_naming(f"{key} prepared:") == []
        assert _claims_naming(f"{group} <prepared>") == []
        assert kept.read_text() == f"{group} sb-kept\n"
        assert not os.path.exists(os.path.join(OWNERS, key))
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not [tag for tag in tags if f"sbx{tag}" in links]
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert not [tag for tag in tags if tag in rules]
        assert not [base for base in detect().bases.values() if os.path.isdir(f"{base}/{group}")]
        # Its zygote, reachable by nobody now, with no keeper left, ends on its own.
        zygote = int(info["zygote"])  # type: ignore[call-overload]
        wait_until(f"the abandoned zygote {zygote} to exit", lambda: not _alive(zygote), 30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if info.get("zygote") and _alive(int(info["zygote"])):  # type: ignore[call-overload]
            os.kill(int(info["zygote"]), signal.SIGKILL)  # type: ignore[call-overload]
        (Path(IDMAP_DIR) / "16382").unlink(missing_ok=True)

        async def close_all() -> None:
            for backend in witnesses:
                await backend.close()

        aio.run(close_all())  # on the loop they ran on: their zygotes are shut down
