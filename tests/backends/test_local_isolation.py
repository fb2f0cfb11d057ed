"""Attacks on the local backend's isolation; every one of them must fail.

Each test plays a hostile sandbox: it tries to see or touch the host, another sandbox or
the image, to exceed a limit, to outlive stop, or to gain a privilege, and asserts the
attempt failed *and* that the host is unchanged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import FileNotFound, FileOperationError
from sandboxd.images import ImageStore

from .image_refs import BUSYBOX, PYTHON, publish


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def record(h: Harness, sid: str) -> object:
    return h.backend._records[sid]  # type: ignore[attr-defined]


def test_cannot_see_host_processes(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, sh("ls /proc | grep -E '^[0-9]+$'"))
            pids = {int(p) for p in r.stdout.split()}
            assert pids <= set(range(1, 20)), pids  # only the sandbox's own small pids
            r = await run(local_harness, sid, ["ps", "-o", "comm"])
            names = set(r.stdout.decode().split()[1:])
            assert names <= {"sandboxd-init", "sh", "sleep", "ps"}, names
            r = await run(local_harness, sid, ["cat", "/proc/1/cmdline"])
            assert r.stdout.rstrip(b"\0") == b"sandboxd-init"  # no host paths
            r = await run(local_harness, sid, ["kill", "-9", "1"])  # PID 1 ignores it
            assert (await run(local_harness, sid, ["true"])).code == 0

    go(aio, attack())


def test_cannot_read_or_write_host_files(
    aio: asyncio.Runner, local_harness: Harness, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("top secret")

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            for path in (str(secret), f"/../../..{secret}", f"/proc/1/root{secret}"):
                r = await run(local_harness, sid, ["cat", path])
                assert r.code != 0 and b"top secret" not in r.stdout
            r = await run(local_harness, sid, sh(f"mkdir -p {tmp_path} && echo pwned > {secret}"))
            # a symlink to a host path resolves inside the sandbox, also for the file helpers
            await run(local_harness, sid, ["ln", "-s", str(secret), "/tmp/link"])
            assert await local_harness.backend.read_file(sid, "/tmp/link") == b"pwned\n"
            await run(local_harness, sid, ["ln", "-s", "/host-only", "/tmp/link2"])
            with pytest.raises(FileNotFound):
                await local_harness.backend.read_file(sid, "/tmp/link2")
        assert secret.read_text() == "top secret"

    go(aio, attack())


def test_cannot_change_the_image_or_another_sandbox(
    aio: asyncio.Runner, local_harness: Harness, busybox_rootfs: Path
) -> None:
    image_passwd = busybox_rootfs / "etc" / "passwd"
    before = image_passwd.read_bytes()

    async def attack() -> None:
        async with local_harness.sandbox() as a, local_harness.sandbox() as b:
            r = await run(
                local_harness, a, sh("echo evil >> /etc/passwd; rm /bin/ls; echo a > /tmp/a")
            )
            assert r.code == 0  # allowed: it only changes a's own overlay
            assert (await run(local_harness, b, ["cat", "/etc/passwd"])).stdout == before
            assert (await run(local_harness, b, ["ls", "/"])).code == 0
            assert (await run(local_harness, b, ["cat", "/tmp/a"])).code != 0
            marker = await local_harness.backend.exec(a, ["sleep", "4242"])
            assert b"4242" not in (await run(local_harness, b, ["ps", "-o", "args"])).stdout
            await marker.close()

    go(aio, attack())
    assert image_passwd.read_bytes() == before
    assert os.path.lexists(busybox_rootfs / "bin" / "ls")


@pytest.fixture
def host_loopback_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that records whoever reaches it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    hits: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            hits.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], hits
    stop.set()
    thread.join()
    srv.close()


def test_cannot_reach_host_loopback_with_egress_none(
    aio: asyncio.Runner, local_harness: Harness, host_loopback_server: tuple[int, list[bytes]]
) -> None:
    port, hits = host_loopback_server

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, sh(f"echo hi | nc -w 2 127.0.0.1 {port}"))
            assert r.code != 0
            r = await run(local_harness, sid, ["ip", "-o", "link"])
            assert [ln.split()[1] for ln in r.stdout.decode().splitlines()] == ["lo:"]

    go(aio, attack())
    assert hits == []


def test_memory_limit_kills(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def attack() -> None:
        async with local_harness.sandbox(memory_bytes=48 << 20) as sid:
            r = await run(
                local_harness, sid, ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
            )
            assert r.code == 137
            assert (await local_harness.backend.stats(sid)).oom_kills >= 1
            assert (await run(local_harness, sid, ["true"])).code == 0  # the sandbox lives on

    go(aio, attack())


def test_pid_limit_stops_fork_bombs(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def attack() -> None:
        async with local_harness.sandbox(pids_max=16) as sid:
            r = await run(local_harness, sid, sh("for i in $(seq 40); do sleep 5 & done; wait"))
            assert b"fork" in r.stderr or b"Resource temporarily unavailable" in r.stderr
            assert (await local_harness.backend.stats(sid)).pids <= 16

    go(aio, attack())


def test_disk_cap_gives_enospc(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def attack() -> None:
        async with local_harness.sandbox(disk_bytes=8 << 20) as sid:
            r = await run(
                local_harness, sid, ["dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=20"]
            )
            assert r.code != 0 and b"No space left on device" in r.stderr
            with pytest.raises(FileOperationError) as err:
                await local_harness.backend.write_file(sid, "/tmp/big2", b"x" * (20 << 20))
            assert err.value.errno == 28  # ENOSPC

    go(aio, attack())


def test_nothing_survives_stop_and_destroy(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def attack() -> None:
        spec = local_harness.spec(command=("/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"))
        backend = local_harness.backend
        await backend.create(spec)
        await backend.start(spec.sandbox_id)
        await run(local_harness, spec.sandbox_id, sh("setsid sleep 1000 & (sleep 1000 &) &"))
        rec = record(local_harness, spec.sandbox_id)
        cgroup = rec.cgroup  # type: ignore[attr-defined]
        for _ in range(100):  # agent, sh and four sleeps
            if len(host_pids := cgroup.pids()) >= 6:
                break
            await asyncio.sleep(0.02)
        assert len(host_pids) >= 6
        await backend.stop(spec.sandbox_id, 1)
        assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in host_pids)
        assert cgroup.pids() == []
        state_dir = rec.state_dir  # type: ignore[attr-defined]
        await backend.destroy(spec.sandbox_id)
        assert not any(Path(d).exists() for d in cgroup.unique_dirs)
        assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
        assert not state_dir.exists()

    go(aio, attack())


def test_kill_0_in_an_exec_reaches_only_its_own_process_group(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The main process and every exec lead a process group of their own (the agent spawns
    them with ``setpgid``): ``kill 0`` in one exec ends its own group only, while the main
    process and what another exec left running live on."""

    def sleeps(out: bytes) -> list[str]:
        return sorted(out.decode().split())

    async def attack() -> None:
        async with local_harness.sandbox(command=("sleep", "1000")) as sid:
            r = await run(local_harness, sid, sh("cut -d' ' -f1,5 /proc/$$/stat"))
            pid, group = r.stdout.split()
            assert pid == group, r.stdout  # its own group, led by itself
            before = await run(local_harness, sid, sh("pidof sleep"))
            assert len(sleeps(before.stdout)) == 1, before  # the main process
            left = await run(local_harness, sid, sh("sleep 1000 >/dev/null 2>&1 & echo $!"))
            # The shell may exit before its forked child has become ``sleep`` (on a busy
            # host it is still ``sh`` for a while): wait for the exec, or pidof misses it.
            comm = f"/proc/{left.stdout.decode().strip()}/comm"
            deadline = time.monotonic() + 10
            while (await run(local_harness, sid, ["cat", comm])).stdout != b"sleep\n":
                assert time.monotonic() < deadline, "the background sleep never started"
                await asyncio.sleep(0.05)
            r = await run(local_harness, sid, sh("kill -TERM 0; sleep 5; echo survived"))
            assert r.code == 128 + 15 and b"survived" not in r.stdout, r
            after = await run(local_harness, sid, sh("pidof sleep"))
            assert sleeps(after.stdout) == sorted(
                [*sleeps(before.stdout), left.stdout.decode().strip()]
            )

    go(aio, attack())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cannot_gain_capabilities(aio: asyncio.Runner, local_harness: Harness) -> None:
    attempts = [
        "mount -t tmpfs none /mnt",
        "umount /proc",
        "echo 1 > /proc/sys/kernel/sysrq",
        "echo 1 > /proc/sysrq-trigger",
        "hostname evil",
        "mknod /tmp/mem c 1 1",
        "chroot / true",
        "unshare -U -r true",
        "unshare -m true",
        "nsenter -t 1 -m true",
        "ip link add dummy0 type dummy",
        "ping -c 1 -W 1 127.0.0.1",
        "echo -1000 > /proc/self/oom_score_adj",
        "readlink /proc/1/fd/3",  # PID 1 (the agent) is undumpable: its /proc is closed
        "cat /proc/1/fd/3",
        "readlink /proc/1/cwd",
        "cat /proc/1/environ",
        "cat /proc/1/maps",
    ]

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, sh("grep Cap /proc/self/status"))
            assert all(
                line.split()[1] == "0000000000000000" for line in r.stdout.decode().splitlines()
            )
            r = await run(local_harness, sid, sh("grep NoNewPrivs /proc/self/status"))
            assert r.stdout.split()[1] == b"1"
            # The OOM killer takes a user process before the agent (spawn.expose_to_oom: set
            # just after the spawn, so a process reads its own a moment later).
            r = await run(local_harness, sid, sh("sleep 0.2; cat /proc/$$/oom_score_adj"))
            assert r.stdout == b"500\n", r
            r = await run(local_harness, sid, ["cat", "/proc/1/oom_score_adj"])
            assert r.stdout == b"0\n", r
            for cmd in attempts:
                r = await run(local_harness, sid, sh(cmd))
                assert r.code != 0, (cmd, r.stdout, r.stderr)
            r = await run(local_harness, sid, ["cat", "/proc/self/cgroup"])
            assert all(line.endswith(":/") for line in r.stdout.decode().split())

    go(aio, attack())


def test_python_raw_socket_and_keyring_denied(aio: asyncio.Runner, local_harness: Harness) -> None:
    script = (
        "import socket, ctypes, errno\n"
        "try:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print('raw ok')\n"
        "except PermissionError: print('raw denied')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.syscall(250, 0, 0)  # keyctl(KEYCTL_GET_KEYRING_ID)\n"
        "print('keyctl', r, ctypes.get_errno() == errno.EPERM)\n"
    )

    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON) as sid:
            r = await run(local_harness, sid, ["python3", "-c", script])
            assert r.stdout == b"raw denied\nkeyctl -1 True\n", r.stderr

    go(aio, attack())


def test_device_nodes_in_an_image_are_inert(
    aio: asyncio.Runner,
    local_harness: Harness,
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    """An imported image could carry a device node (say, of the host's disk): nodev."""
    rootfs = tmp_path / "evil-rootfs"
    os.system(f"cp -a {busybox_rootfs} {rootfs}")
    os.mknod(rootfs / "evil", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # harmless /dev/null
    evil = publish(image_store, rootfs, "evil")

    async def attack() -> None:
        async with local_harness.sandbox(image=evil) as sid:
            r = await run(local_harness, sid, sh("echo x > /evil"))
            assert r.code != 0 and b"Permission denied" in r.stderr

    go(aio, attack())


def test_spec_is_validated() -> None:
    from sandboxd.backends.errors import InvalidSpec

    bad_values = (
        {"sandbox_id": "../x"},
        {"workdir": "rel"},
        {"memory_bytes": 0},
        {"command": ()},
        {"image": ""},
        {"image": "has space"},
        {"image": "/host/path\n"},
        {"image": "x" * 256},
    )
    for bad in bad_values:
        with pytest.raises(InvalidSpec) as info:
            SandboxSpec(**{"sandbox_id": "ok", "image": "busybox", **bad})  # type: ignore[arg-type]
        assert info.value.field == next(iter(bad))


RUNNER = """
import asyncio, sys
from pathlib import Path
from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore

async def main() -> None:
    backend = LocalBackend(sys.argv[1], images=ImageStore(sys.argv[2]))
    await backend.create(SandboxSpec("survivor", "busybox:latest"))
    await backend.start("survivor")
    await backend.write_file("survivor", "/tmp/mark", b"before restart")
    await backend.close()  # the runner process exits; the sandbox must not

asyncio.run(main())
"""


def test_sandbox_survives_a_runner_process_restart(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts, cgroups")
    from sandboxd.backends.local import LocalBackend

    data = tmp_path / "runner-data"
    images = str(image_store.data_dir)
    subprocess.run([sys.executable, "-c", RUNNER, str(data), images], check=True)

    async def scenario() -> None:
        backend = LocalBackend(data, images=image_store)
        try:
            assert await backend.recover() == ["survivor"]
            assert await backend.read_file("survivor", "/tmp/mark") == b"before restart"
            h = Harness(backend, BUSYBOX, None, lambda: backend)
            assert (await run(h, "survivor", ["echo", "still here"])).stdout == b"still here\n"
            assert (await backend.state("survivor")).state == "running"
            await backend.destroy("survivor")
            assert await backend.recover() == []
        finally:
            await backend.close()

    go(aio, scenario())


def _host_uid_base(agent_pid: int) -> int:
    """The first host uid of a sandbox's user namespace (its agent's ``uid_map``)."""
    inside, host, _count = Path(f"/proc/{agent_pid}/uid_map").read_text().split()
    assert inside == "0"
    return int(host)


def test_concurrent_sandboxes_never_share_host_ids(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Each sandbox owns its host uid range alone, from a fresh backend's first create on.

    Ranges are prepared ahead (a user namespace made by the zygote); a range must be handed
    out once, or two sandboxes would run as the same host users.
    """
    from sandboxd.backends.local import LocalBackend

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "ids", images=image_store)
        h = Harness(backend, BUSYBOX, None, lambda: backend)
        live: list[str] = []
        try:
            first = h.spec()
            await backend.create(first)  # the first create: the pool starts preparing now
            live.append(first.sandbox_id)
            ranges = backend._ranges  # type: ignore[attr-defined]
            async with asyncio.timeout(20):  # let it prepare its ranges ahead
                while len(ranges.ready) < ranges.depth:
                    await asyncio.sleep(0.02)
            more = [h.spec() for _ in range(ranges.depth + 2)]  # all prepared, then fresh
            await asyncio.gather(*(backend.create(spec) for spec in more))
            live.extend(spec.sandbox_id for spec in more)
            for sid in live:
                await backend.start(sid)
            bases = [_host_uid_base(record(h, sid).agent_pid) for sid in live]  # type: ignore[attr-defined]
            assert len(set(bases)) == len(bases), bases
            slots = [record(h, sid).ids.slot for sid in live]  # type: ignore[attr-defined]
            waiting = [ids.slot for ids in ranges.ready]
            assert not set(waiting) & set(slots), (waiting, slots)  # none handed out twice
            assert len(set(waiting)) == len(waiting), waiting
        finally:
            for sid in live:
                await backend.destroy(sid)
            await backend.close()

    go(aio, scenario())
