"""Warm sandboxes of the local backend: prepared under a slot name, claimed under an id.

A claimed sandbox must be indistinguishable from one created cold under its id (its own
hostname, environment, command, lifetime, state directory and records, a fresh writable
layer), claims must never see each other's files, and slots a killed runner left behind
must be destroyed by the next one without leaving processes, cgroups, mounts, loop devices,
id-range claims or state directories (``src/sandboxd/backends/local/warm.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from sandboxd.backends.base import EgressType, IngressMode, MountedFile, NetworkSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import InvalidSpec, SandboxExists, SandboxStartError
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.state import RECORD
from sandboxd.backends.local.warm import SLOT_PREFIX
from sandboxd.images import ImageStore
from sandboxd.record_log import read_record
from tests.support.host_network import link_exists

from .disk_support import wait_for_loops, wait_in_use
from .image_refs import BUSYBOX
from .nethost import NetHost, test_host

__all__ = ["test_host"]  # the module-scoped test host fixture (nethost.py)


def go(aio: asyncio.Runner, coro: object, timeout: float = 120) -> object:
    return aio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def harness(backend: LocalBackend) -> Harness:
    return Harness(backend, BUSYBOX, None, lambda: backend, prefix="warm-t-")


def group_dirs(backend: LocalBackend) -> list[str]:
    """The cgroup directories under which ``backend`` makes its sandboxes' cgroups."""
    assert backend._cgroups is not None
    return sorted(set(backend._cgroups._group_dirs().values()))


def slot_cgroups(groups: list[str]) -> list[str]:
    """Cgroup directories in ``groups`` named like a slot."""
    return sorted(str(p) for g in groups for p in Path(g).glob(f"{SLOT_PREFIX}*"))


def id_claims(backend: LocalBackend) -> list[str]:
    """User-id range claim files that name a slot of ``backend``."""
    claims = Path("/run/sandboxd")
    if not claims.is_dir():
        return []
    out = []
    for path in claims.rglob("*"):
        if path.is_file():
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if backend._group in text and SLOT_PREFIX in text:
                out.append(text.strip())
    return out


def test_a_claimed_sandbox_is_its_own(
    aio: asyncio.Runner, local_backend: LocalBackend, busybox_rootfs: Path
) -> None:
    h = harness(local_backend)
    b = local_backend

    async def scenario() -> None:
        template = h.spec()
        slot = await b.prepare(template)
        assert slot.startswith(SLOT_PREFIX)
        assert (b.data_dir / "warm" / slot).is_dir()
        sid = "warm-t-claimed"
        spec = replace(
            template,
            sandbox_id=sid,
            env={"WHO": "claimant"},
            command=("/bin/sh", "-c", "echo main-started; exec sleep 1000"),
            workdir="/tmp",
            max_lifetime_seconds=600,
        )
        own_uts, own_name = os.readlink("/proc/thread-self/ns/uts"), socket.gethostname()
        await b.claim(slot, spec)
        # The claim named the sandbox from this very thread (the event loop's): it is back
        # in the host's UTS namespace, and the host's name is untouched.
        assert os.readlink("/proc/thread-self/ns/uts") == own_uts
        assert socket.gethostname() == own_name
        try:
            r = await run(
                h, sid, sh("hostname; echo $WHO $HOSTNAME; pwd; cat /proc/sys/kernel/hostname")
            )
            assert r.code == 0, r
            assert r.stdout.decode().split() == [sid, "claimant", sid, "/tmp", sid]
            state = await b.state(sid)
            assert state.state == "running"
            record = read_record(b.sandboxes_dir / sid / RECORD)
            assert record["sandbox_id"] == sid and record["started"] is True
            assert not (b.data_dir / "warm" / slot).exists()
            main = await run(h, sid, sh("cat /proc/*/cmdline | tr '\\0' ' '"))
            assert b"sleep 1000" in main.stdout  # the claimant's command is the main process
            logs = b"".join([c.data async for c in b.logs(sid)])
            assert b"main-started" in logs
            with_other_host = replace(spec, sandbox_id="warm-t-other", hostname="chosen")
            slot2 = await b.prepare(template)
            await b.claim(slot2, with_other_host)
            try:
                r = await run(h, "warm-t-other", ["hostname"])
                assert r.stdout.decode().strip() == "chosen"
            finally:
                await b.destroy("warm-t-other")
            # a claim under an id that exists is refused, and the slot stays usable
            slot3 = await b.prepare(template)
            try:
                await b.claim(slot3, spec)
                raise AssertionError("claimed under an existing id")
            except SandboxExists:
                pass
            await b.discard(slot3)
            # the agent recorded the claimant's start; stop ends it like any sandbox
            assert await b.stop(sid, 1) in (0, 143)
        finally:
            await b.destroy(sid)
        assert not (b.sandboxes_dir / sid).exists()

    go(aio, scenario())


def test_claims_are_isolated_from_each_other(
    aio: asyncio.Runner, local_backend: LocalBackend, busybox_rootfs: Path
) -> None:
    h = harness(local_backend)
    b = local_backend

    async def scenario() -> None:
        template = h.spec()
        slots = [await b.prepare(template) for _ in range(3)]
        ids = [f"warm-t-iso-{i}" for i in range(3)]
        try:
            for i, (slot, sid) in enumerate(zip(slots, ids, strict=True)):
                await b.claim(slot, replace(template, sandbox_id=sid, env={"N": str(i)}))
                seen = await run(
                    h, sid, sh("ls -A /tmp /root; cat /tmp/secret* 2>/dev/null; echo $N")
                )
                assert seen.stdout.decode().split() == ["/root:", "/tmp:", str(i)], seen
                wrote = await run(
                    h, sid, sh(f"echo from-{i} > /tmp/secret{i}; echo x > /root/r{i}")
                )
                assert wrote.code == 0
                if i == 1:  # one ends before the next is claimed: still nothing carries over
                    await b.stop(ids[0], 1)
        finally:
            for sid in ids:
                await b.destroy(sid)

    go(aio, scenario())


def test_a_claimed_sandbox_has_the_egress_it_was_built_with(
    aio: asyncio.Runner, local_backend: LocalBackend, busybox_rootfs: Path, test_host: NetHost
) -> None:
    """Network namespace and rules are made ahead; after the claim they are the sandbox's."""
    h = harness(local_backend)
    b = local_backend

    async def scenario() -> None:
        allow = NetworkSpec(egress=EgressType.ALLOWLIST, cidrs=(f"{test_host.ip_a}/32",))
        template = h.spec(network=allow)
        slot = await b.prepare(template)
        sid = "warm-t-net"
        await b.claim(slot, replace(template, sandbox_id=sid))
        try:
            reached = await run(h, sid, sh(f"nc -w 3 {test_host.ip_a} 8080 </dev/null"))
            assert reached.code == 0 and reached.stdout.startswith(
                f"hello {test_host.ip_a}".encode()
            )
            refused = await run(h, sid, sh(f"nc -w 3 {test_host.ip_b} 8080 </dev/null"))
            assert refused.code != 0 and refused.stdout == b""
        finally:
            await b.destroy(sid)

    go(aio, scenario())


def test_a_dead_or_unsuitable_slot_is_refused_cleanly(
    aio: asyncio.Runner, local_backend: LocalBackend, busybox_rootfs: Path
) -> None:
    h = harness(local_backend)
    b = local_backend

    async def scenario() -> None:
        template = h.spec()
        ports = NetworkSpec(ingress=IngressMode.INTERNAL, exposed_ports=(8080,))
        for bad, field in (
            (replace(template, mounted_files=(MountedFile("/etc/x", b"x"),)), "mounted_files"),
            (replace(template, network=ports), "network.exposed_ports"),
        ):
            try:
                await b.prepare(bad)
                raise AssertionError("prepared a slot that cannot be warm")
            except InvalidSpec as exc:
                assert exc.field == field
        slot = await b.prepare(template)
        b._warm._slots[slot].kill_agent()  # it dies while nobody claims it
        await asyncio.sleep(0.2)
        try:
            await b.claim(slot, replace(template, sandbox_id="warm-t-dead"))
            raise AssertionError("claimed a dead slot")
        except SandboxStartError:
            pass
        assert not (b.sandboxes_dir / "warm-t-dead").exists()
        assert not (b.data_dir / "warm" / slot).exists()
        assert "warm-t-dead" not in b._records

    go(aio, scenario())


def test_a_claimed_sandbox_is_recovered_under_its_id(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        first = LocalBackend(tmp_path / "runner", images=image_store)
        h = harness(first)
        template = h.spec()
        slot = await first.prepare(template)
        await first.claim(slot, replace(template, sandbox_id="warm-t-kept"))
        first._records.clear()  # the runner goes away without touching its sandboxes
        first._warm._slots.clear()
        second = LocalBackend(tmp_path / "runner", images=image_store)
        try:
            assert await second.recover() == ["warm-t-kept"]
            r = await run(harness(second), "warm-t-kept", ["hostname"])
            assert r.stdout.decode().strip() == "warm-t-kept"
            await second.destroy("warm-t-kept")
        finally:
            await second.close()
            # The zygote is the first's child, which the second used and shut down: reaped
            # here, or it stays a zombie of the test process (a leftover the suite reports).
            zygote = first._zygote._proc
            if zygote is not None:
                await asyncio.to_thread(zygote.wait, 15)

    go(aio, scenario())


# -- a runner killed with SIGKILL while it holds warm slots -------------------------------------

RUNNER = """
import asyncio, json, sys
from pathlib import Path
from sandboxd.backends.base import NetworkSpec, EgressType, SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore
from sandboxd.record_log import read_record

async def main(data_dir, images_dir, count):
    backend = LocalBackend(data_dir, images=ImageStore(images_dir))
    spec = SandboxSpec("t", "busybox:latest", memory_bytes=128 << 20, disk_bytes=32 << 20,
                       network=NetworkSpec(egress=EgressType.INTERNET))
    slots = [await backend.prepare(spec) for _ in range(count)]
    groups = sorted(set(backend._cgroups._group_dirs().values()))
    print(json.dumps({"slots": slots, "groups": groups}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_slots_of_a_killed_runner_are_destroyed_by_the_next(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "runner"
    argv = [sys.executable, "-c", RUNNER, str(data_dir), str(image_store.data_dir), "3"]
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")
    assert runner.stdout is not None
    made = json.loads(runner.stdout.readline())
    slots, groups = made["slots"], made["groups"]
    runner.send_signal(signal.SIGKILL)
    runner.wait()

    async def scenario() -> None:
        backend = LocalBackend(data_dir, images=image_store)
        try:
            # the slots outlived their runner: processes, cgroups, layers, networks
            assert sorted(p.name for p in (data_dir / "warm").iterdir()) == sorted(slots)
            assert {Path(d).name for d in slot_cgroups(groups)} == set(slots)
            leases = [read_record(data_dir / "warm" / s / RECORD)["lease"] for s in slots]
            host_ends = [f"sbx{lease['tag']}" for lease in leases]  # the veths' host ends
            assert all(link_exists(end) for end in host_ends)  # their namespaces: the slots'
            assert await backend.discard_prepared() == 3
            assert list((data_dir / "warm").iterdir()) == []
            assert slot_cgroups(groups) == []
            assert id_claims(backend) == []
            assert not any(link_exists(end) for end in host_ends)
            assert await wait_in_use(backend, 0) == 0  # no layer (loop device) left in use
        finally:
            await backend.close()
        assert await wait_for_loops(data_dir / "disk", 0) == []
        assert (
            not (data_dir / "sandboxes").exists() or list((data_dir / "sandboxes").iterdir()) == []
        )

    go(aio, scenario())


CLAIM_THEN_DIE = """
import asyncio, json, os, signal, sys
from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.local import LocalBackend, process
from sandboxd.images import ImageStore
from sandboxd.record_log import read_record

async def main(data_dir, images_dir):
    backend = LocalBackend(data_dir, images=ImageStore(images_dir))
    spec = SandboxSpec("t", "busybox:latest", memory_bytes=128 << 20, disk_bytes=32 << 20)
    slot = await backend.prepare(spec)
    groups = sorted(set(backend._cgroups._group_dirs().values()))
    print(json.dumps({"slot": slot, "groups": groups}), flush=True)
    send = process.send_request

    def send_then_die(*args, **kwargs):
        send(*args, **kwargs)  # the agent has the start; the records have not moved yet
        os.kill(os.getpid(), signal.SIGKILL)

    process.send_request = send_then_die
    claimed = SandboxSpec("warm-t-died", "busybox:latest", memory_bytes=128 << 20,
                          disk_bytes=32 << 20, command=("sleep", "1000"))
    await backend.claim(slot, claimed)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_runner_killed_in_the_middle_of_a_claim_leaves_nothing(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    # The claim sends the agent its start before the records move (warm.py): a runner
    # SIGKILLed in between leaves a started slot in warm/ under its slot name. Its start was
    # never answered, so the control plane sends it again (cold); the slot must go.
    data_dir = tmp_path / "runner"
    argv = [sys.executable, "-c", CLAIM_THEN_DIE, str(data_dir), str(image_store.data_dir)]
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")
    assert runner.stdout is not None
    made = json.loads(runner.stdout.readline())
    slot, groups = made["slot"], made["groups"]
    assert runner.wait(60) == -signal.SIGKILL

    async def scenario() -> None:
        backend = LocalBackend(data_dir, images=image_store)
        try:
            assert [p.name for p in (data_dir / "warm").iterdir()] == [slot]
            assert {Path(d).name for d in slot_cgroups(groups)} == {slot}
            assert await backend.discard_prepared() == 1
            assert list((data_dir / "warm").iterdir()) == []
            assert slot_cgroups(groups) == []
            assert id_claims(backend) == []
            assert await backend.recover() == []  # nothing under the claimed id
            assert await wait_in_use(backend, 0) == 0
        finally:
            await backend.close()
        assert await wait_for_loops(data_dir / "disk", 0) == []
        assert not (data_dir / "sandboxes" / "warm-t-died").exists()

    go(aio, scenario())


def test_a_second_live_backend_on_the_same_key_leaves_the_firsts_slots_alone(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A runner destroys the warm slots a *dead* predecessor left, never those of a live
    backend on the same data directory (two runners given one directory): those are ready
    sandboxes that backend is about to hand out."""

    async def scenario() -> None:
        first = LocalBackend(tmp_path / "runner", images=image_store)
        second = None
        try:
            h = harness(first)
            slot = await first.prepare(h.spec())
            second = LocalBackend(tmp_path / "runner", images=image_store)
            assert await second.discard_prepared() == 0
            assert not second._owner.alone  # type: ignore[attr-defined]
            assert [p.name for p in (tmp_path / "runner" / "warm").iterdir()] == [slot]
            spec = h.spec()
            await first.claim(slot, spec)  # still whole: it becomes a sandbox that runs
            r = await run(h, spec.sandbox_id, ["echo", "claimed"])
            assert r.stdout == b"claimed\n"
            await first.destroy(spec.sandbox_id)
        finally:
            if second is not None:
                await second.close()
            await first.close()
        assert list((tmp_path / "runner" / "warm").iterdir()) == []
        assert await wait_for_loops(tmp_path / "runner" / "disk", 0) == []

    go(aio, scenario())


def test_close_destroys_unclaimed_slots(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "runner", images=image_store)
        h = harness(backend)
        for _ in range(2):
            await backend.prepare(h.spec())
        groups = group_dirs(backend)
        assert len({Path(d).name for d in slot_cgroups(groups)}) == 2
        await backend.close()
        assert list((tmp_path / "runner" / "warm").iterdir()) == []
        assert slot_cgroups(groups) == []
        assert id_claims(backend) == []
        assert await wait_for_loops(tmp_path / "runner" / "disk", 0) == []

    go(aio, scenario())


def test_a_discard_whose_caller_is_cancelled_still_tears_the_slot_down(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """The slot left the backend's list when its discard began; a discard cancelled half-way
    used to leave its sandbox's cgroup, writable layer and id range to nobody."""

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "runner", images=image_store)
        h = harness(backend)
        slot = await backend.prepare(h.spec())
        groups = group_dirs(backend)
        discarding = asyncio.ensure_future(backend.discard(slot))
        await asyncio.sleep(0.001)  # under way: the agent is killed, not yet waited for
        discarding.cancel()
        await asyncio.gather(discarding, return_exceptions=True)
        await backend.close()  # waits for the teardown the cancelled caller left
        assert list((tmp_path / "runner" / "warm").iterdir()) == []
        assert slot_cgroups(groups) == []
        assert id_claims(backend) == []
        assert await wait_for_loops(tmp_path / "runner" / "disk", 0) == []

    go(aio, scenario())


def test_a_slot_killed_before_its_first_record_leaves_nothing(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """What ``_build`` makes before ``record.json`` (id claim, cgroup) is found by its name."""

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "runner", images=image_store)
        try:
            cgroups = await backend._ready()
            slot = f"{SLOT_PREFIX}0123456789ab"
            (tmp_path / "runner" / "warm" / slot).mkdir(parents=True)
            ids = backend._ids.allocate(slot)
            cgroup = cgroups.create(slot)
            assert id_claims(backend) and slot_cgroups(group_dirs(backend))
            assert await backend.discard_prepared() == 1
            assert id_claims(backend) == [] and slot_cgroups(group_dirs(backend)) == []
            assert list((tmp_path / "runner" / "warm").iterdir()) == []
            assert not any(Path(d).exists() for d in cgroup.unique_dirs)
            assert ids not in backend._ids.adopt(slot)
        finally:
            await backend.close()

    go(aio, scenario())
