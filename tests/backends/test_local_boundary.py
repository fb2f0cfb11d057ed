"""The sandbox boundary under attack: every path, descriptor and binary that could lead out.

Each test replays an attack from the security review (issue 7) or the variant a reviewer
would try next, through the backend's own API (``read_file``/``write_file``/``exec``, as the
runner uses it), and asserts that it fails *and* that the host is unchanged. The host side
of each test plants a secret and a target directory under ``tmp_path``; nothing outside the
test's own directory is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import stat
import struct
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import FileNotFound, FileOperationError, FilePermissionDenied
from sandboxd.images import ImageStore

from .image_refs import PYTHON, publish

CLIMB = "/.." * 16
# Every way back to a host object that a leaked descriptor or a magic link used to offer.
MAGIC_PREFIXES = [
    *(f"/proc/self/fd/{n}" for n in range(0, 12)),
    *(f"/proc/1/fd/{n}" for n in range(0, 12)),
    "/proc/thread-self/fd/3",
    "/proc/self/cwd",
    "/proc/self/root",
    "/proc/1/root",
    "/proc/1/cwd",
    "/dev/fd/3",
]


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def record(h: Harness, sid: str) -> object:
    return h.backend._records[sid]  # type: ignore[attr-defined]


@pytest.fixture
def host_secret(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A host file the sandbox must never read, and a host directory it must never write."""
    secret = tmp_path / "host-secret"
    secret.write_text("top secret")
    target = tmp_path / "host-target"
    target.mkdir()
    yield secret, target
    assert secret.read_text() == "top secret"
    assert list(target.iterdir()) == [], "something was written on the host"


async def refused(coro: object) -> None:
    try:
        result = await coro  # type: ignore[misc]
    except (FilePermissionDenied, FileNotFound, FileOperationError):
        return
    raise AssertionError(f"the attack succeeded: {result!r}"[:300])


def test_api_paths_through_magic_links_are_refused(
    aio: asyncio.Runner, local_harness: Harness, host_secret: tuple[Path, Path]
) -> None:
    secret, target = host_secret
    b = local_harness.backend

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            for prefix in MAGIC_PREFIXES:
                await refused(b.read_file(sid, f"{prefix}{CLIMB}{secret}"))
                await refused(b.read_file(sid, f"{prefix}{CLIMB}/etc/hostname"))
                await refused(b.write_file(sid, f"{prefix}{CLIMB}{target}/pwned", b"x"))
                await refused(
                    b.write_file(sid, f"{prefix}{CLIMB}{target}/a/b", b"x", make_parents=True)
                )
            for link in ("/proc/self/exe", "/proc/1/exe", "/proc/self/root/proc/self/exe"):
                await refused(b.read_file(sid, link))
                await refused(b.write_file(sid, link, b"\x7fELF overwritten"))
            # plain ".." climbs stop at the sandbox's own root
            inside = (await run(local_harness, sid, ["cat", "/etc/passwd"])).stdout
            assert await b.read_file(sid, f"{CLIMB}/etc/passwd") == inside

    go(aio, attack())


def test_planted_symlinks_resolve_inside_the_sandbox(
    aio: asyncio.Runner, local_harness: Harness, host_secret: tuple[Path, Path]
) -> None:
    secret, target = host_secret
    b = local_harness.backend

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            plant = (
                "ln -s /proc/self/fd/3/../../.. /tmp/out; ln -s /proc/1/root /tmp/pid1root;"
                f"mkdir -p {target}; ln -s {target} /tmp/abs; ln -s / /tmp/slash; mkdir -p /tmp/d;"
                "ln -s /proc/self/fd/3 /tmp/d/p; ln -s ../../../../../../.. /tmp/up"
            )
            assert (await run(local_harness, sid, sh(plant))).code == 0
            for base in ("/tmp/out", "/tmp/pid1root", "/tmp/d/p"):
                await refused(b.read_file(sid, f"{base}{secret}"))
                await refused(b.write_file(sid, f"{base}{target}/pwned", b"x"))
                await refused(b.write_file(sid, f"{base}/x/y", b"x", make_parents=True))
            # ordinary symlinks are followed, but only within the sandbox
            await b.write_file(sid, "/tmp/abs/inside", b"stays in", make_parents=True)
            await b.write_file(sid, "/tmp/slash/etc/made-via-link", b"ok")
            await b.write_file(sid, "/tmp/up/etc/made-via-dotdot", b"ok")
            r = await run(local_harness, sid, sh(f"cat {target}/inside /etc/made-via-*"))
            assert r.stdout == b"stays inokok"
            await refused(b.read_file(sid, f"/tmp/up{secret}"))

    go(aio, attack())


def test_a_symlink_swap_race_never_reaches_the_host(
    aio: asyncio.Runner, local_harness: Harness, host_secret: tuple[Path, Path]
) -> None:
    """The sandbox flips a path between a directory and a magic-link climb while we write."""
    _secret, target = host_secret
    b = local_harness.backend
    flipper = (
        "mkdir -p /tmp/real; while true; do "
        "rm -rf /tmp/race; mkdir /tmp/race; rm -rf /tmp/race; "
        "ln -s /proc/self/fd/3/../../../../../.. /tmp/race; rm -f /tmp/race; "
        "ln -s /proc/1/root/../../../.. /tmp/race; rm -f /tmp/race; done"
    )

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            loop = await b.exec(sid, ["/bin/sh", "-c", flipper])
            try:
                for i in range(150):
                    path = f"/tmp/race{target}/pwned-{i}"
                    with contextlib.suppress(FileOperationError):
                        await b.write_file(sid, path, b"x", make_parents=True)
            finally:
                await loop.close()

    go(aio, attack())


def test_exec_never_runs_a_host_binary(
    aio: asyncio.Runner, local_harness: Harness, host_secret: tuple[Path, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "host-tool"
    marker.write_text("#!/bin/sh\necho HOST BINARY RAN\n")
    marker.chmod(0o755)

    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            for prefix in ("/proc/self/fd/3", "/proc/1/fd/3", "/proc/1/root", "/dev/fd/3"):
                r = await run(local_harness, sid, [f"{prefix}{CLIMB}{marker}"])
                assert r.code in (126, 127) and b"HOST BINARY" not in r.stdout, r
            for argv0 in ("/proc/self/exe", "/proc/1/exe"):
                r = await run(local_harness, sid, [argv0, "-c", "print('interp')"])
                assert r.code in (126, 127) and b"refused" in r.stderr, r
            # a symlinked shell or PATH entry leading through a magic link is refused too
            plant = (
                f"ln -s /proc/self/fd/3{CLIMB}{marker} /usr/local/bin/evil;"
                "ln -s /proc/self/exe /usr/local/bin/selfexe; mkdir -p /opt/p;"
                f"ln -s /proc/self/fd/3{CLIMB}{marker.parent} /opt/p/dir"
            )
            assert (await run(local_harness, sid, sh(plant))).code == 0
            for argv in (["evil"], ["selfexe"], ["/opt/p/dir/host-tool"]):
                r = await run(local_harness, sid, argv)
                assert r.code in (126, 127) and b"HOST BINARY" not in r.stdout, (argv, r)
            r = await run(local_harness, sid, ["host-tool"], env={"PATH": "/opt/p/dir"})
            assert r.code in (126, 127)
            # cwd is resolved in root as well
            r = await run(local_harness, sid, ["pwd"], cwd=f"{CLIMB}/tmp")
            assert r.stdout == b"/tmp\n"
            for cwd in ("/proc/self/fd/3/..", "/proc/1/root", "/proc/self/cwd"):
                r = await run(local_harness, sid, ["pwd"], cwd=cwd)
                assert r.code == 126 and b"refused" in r.stderr, (cwd, r)

    go(aio, attack())


def test_proc_exe_overwrite_cannot_reach_a_host_file(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    """CVE-2019-5736: rewrite whatever binary a sandbox process was started from.

    A loop inside opens ``/proc/<pid>/exe`` of every process it can see for writing while
    we keep exec'ing into the sandbox. The processes' executables are the sandbox's own
    files or the sealed in-memory interpreter copy; the host's interpreter is unchanged.
    """
    interpreter = Path(os.path.realpath(sys.executable))
    before = hashlib.sha256(interpreter.read_bytes()).hexdigest()
    script = (
        "import os, time\n"
        "end = time.time() + 3\n"
        "hits = set()\n"
        "while time.time() < end:\n"
        "    for p in os.listdir('/proc'):\n"
        "        if not p.isdigit() or int(p) == os.getpid():\n"
        "            continue\n"
        "        try:\n"
        "            target = os.readlink(f'/proc/{p}/exe')\n"
        "            fd = os.open(f'/proc/{p}/exe', os.O_WRONLY)\n"
        "            hits.add(target)\n"
        "            os.close(fd)\n"
        "        except OSError:\n"
        "            pass\n"
        "print(sorted(hits))\n"
    )

    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON) as sid:
            hunter = asyncio.ensure_future(run(local_harness, sid, ["python3", "-c", script]))
            while not hunter.done():
                await run(local_harness, sid, ["sh", "-c", "true"])
            result = await hunter
            assert result.code == 0, result.stderr
            for target in eval(result.stdout.decode()):  # the only writable exes: its own files
                assert "memfd" not in target and not target.startswith(str(interpreter.parent))
            r = await run(local_harness, sid, sh("ls -l /proc/1/exe; readlink /proc/1/exe"))
            assert b"memfd" not in r.stdout and str(interpreter).encode() not in r.stdout

    go(aio, attack())
    assert hashlib.sha256(interpreter.read_bytes()).hexdigest() == before


def test_sandbox_processes_hold_no_host_descriptor(
    aio: asyncio.Runner, local_harness: Harness, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """From the host: PID 1, a file worker and user processes hold only sandbox objects."""
    host_devices = {os.stat("/").st_dev, os.stat(tmp_path).st_dev}
    data_dir = Path(getattr(local_harness.backend, "data_dir"))  # noqa: B009
    host_devices.add(os.stat(data_dir).st_dev)
    host_devices.add(os.stat(busybox_rootfs).st_dev)

    def check(pid: int) -> None:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                st = os.stat(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:  # closed since the listing: it holds nothing
                continue
            kind = stat.S_IFMT(st.st_mode)
            if kind in (stat.S_IFIFO, stat.S_IFSOCK) or link.startswith("anon_inode:"):
                continue
            assert st.st_dev not in host_devices, f"pid {pid} fd {name} -> {link}"

    async def scenario() -> None:
        async with local_harness.sandbox(command=("sleep", "1000")) as sid:
            rec = record(local_harness, sid)
            check(rec.agent_pid)  # type: ignore[attr-defined]
            session = await local_harness.backend.exec(sid, ["sleep", "30"])
            try:
                agent = rec.agent_pid  # type: ignore[attr-defined]
                children = Path(f"/proc/{agent}/task/{agent}/children")
                async with asyncio.timeout(10):  # the main process and the exec'd one
                    while len(children.read_text().split()) < 2:
                        await asyncio.sleep(0.01)
                for pid in children.read_text().split():
                    check(int(pid))
            finally:
                await session.close()

    go(aio, scenario())


def _unread(pipe_end: int) -> int:
    """Bytes written to a pipe and not yet read from it."""
    return int(struct.unpack("i", fcntl.ioctl(pipe_end, termios.FIONREAD, b"\0" * 4))[0])


def test_worker_for_a_blocked_write_holds_no_host_descriptor(
    aio: asyncio.Runner, local_harness: Harness, tmp_path: Path
) -> None:
    """Catch a file worker mid-transfer (its pipe never closed) and inspect it."""
    from sandboxd.backends.local import protocol

    host_devices = {os.stat("/").st_dev, os.stat(tmp_path).st_dev}

    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            rec = record(local_harness, sid)
            sock = protocol.connect(rec.agent_socket)  # type: ignore[attr-defined]
            read_end, write_end = os.pipe()
            try:
                protocol.send(sock, {"op": "write_file", "path": "/tmp/slow"}, [read_end])
                os.close(read_end)
                os.write(write_end, b"partial")
                children = Path(f"/proc/{rec.agent_pid}/task/{rec.agent_pid}/children")  # type: ignore[attr-defined]
                async with asyncio.timeout(10):
                    while not children.read_text().split():
                        await asyncio.sleep(0.01)
                worker = int(children.read_text().split()[0])
                # Inspected once it has read what was written: a worker still shedding the
                # agent's descriptors (right after its fork) loses them while being listed.
                async with asyncio.timeout(10):
                    while _unread(write_end):
                        await asyncio.sleep(0.01)
                for name in os.listdir(f"/proc/{worker}/fd"):
                    st = os.stat(f"/proc/{worker}/fd/{name}")
                    if stat.S_IFMT(st.st_mode) in (stat.S_IFIFO, stat.S_IFSOCK):
                        continue
                    assert st.st_dev not in host_devices, os.readlink(f"/proc/{worker}/fd/{name}")
                status = Path(f"/proc/{worker}/status").read_text()
                uid = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1]
                assert int(uid) >= 1 << 16, "the worker must run as the sandbox's unprivileged uid"
                os.close(write_end)
                write_end = -1
                sock.settimeout(10)
                reply, _ = protocol.recv(sock)  # the worker answers once it saw EOF
                assert reply == {"ok": True, "written": len(b"partial")}, reply
            finally:
                if write_end >= 0:
                    os.close(write_end)
                sock.close()
            assert await local_harness.backend.read_file(sid, "/tmp/slow") == b"partial"

    go(aio, scenario())


def test_main_log_and_exit_record_are_written_outside_the_sandbox(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        command = ("/bin/sh", "-c", "echo from-main; sleep 1000")
        async with local_harness.sandbox(command=command) as sid:
            attempts = (
                "for f in /proc/1/fd/*; do echo forged >> $f; done;"
                "echo forged > /proc/self/fd/9; ls -la /proc/1/fd/"
            )
            r = await run(local_harness, sid, sh(attempts))
            assert b"Permission denied" in r.stderr
            rec = record(local_harness, sid)
            log = rec.log_path  # type: ignore[attr-defined]
            assert log.stat().st_uid == 0 and stat.S_IMODE(log.stat().st_mode) == 0o600
            async with asyncio.timeout(10):
                while b"from-main" not in log.read_bytes():
                    await asyncio.sleep(0.02)
            assert b"forged" not in log.read_bytes()
            await local_harness.backend.stop(sid, 1)
            exit_record = rec.state_dir / "exit.json"  # type: ignore[attr-defined]
            assert exit_record.stat().st_uid == 0

    go(aio, scenario())


def test_mountinfo_shows_no_host_path(
    aio: asyncio.Runner, local_harness: Harness, busybox_rootfs: Path
) -> None:
    data_dir = str(getattr(local_harness.backend, "data_dir"))  # noqa: B009

    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, ["cat", "/proc/self/mountinfo"])
            text = r.stdout.decode()
            assert "overlay" in text
            for host_path in (data_dir, str(busybox_rootfs), "/var/cache", "/tmp/"):
                assert host_path not in text, (host_path, text)

    go(aio, scenario())


def test_sandboxes_share_empty_mount_points_that_stay_empty_on_the_host(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """Every agent mounts its image, disk and root on the backend's ``mnt/`` directories, in
    a mount namespace of its own: with two sandboxes running, each writing a file of its
    own, the host's mount points stay empty and unmounted, neither sees the other's file,
    and a sandbox's state directory holds no mount points of its own."""
    mount_dir = Path(getattr(local_harness.backend, "data_dir")) / "mnt"  # noqa: B009

    def host_mounts() -> str:
        with open("/proc/self/mountinfo") as fh:
            return fh.read()

    async def scenario() -> None:
        async with local_harness.sandbox() as one, local_harness.sandbox() as two:
            for sid in (one, two):
                r = await run(local_harness, sid, sh(f"echo {sid} > /mine && ls /"))
                assert r.code == 0, r.stderr
            for sid, other in ((one, two), (two, one)):
                r = await run(local_harness, sid, sh("cat /mine"))
                assert r.stdout.decode().strip() == sid and other not in r.stdout.decode()
            assert sorted(os.listdir(mount_dir)) == ["lower", "root", "rw"]
            for sub in ("lower", "root", "rw"):
                assert os.listdir(mount_dir / sub) == [], sub
            assert str(mount_dir) not in host_mounts()
            for sid in (one, two):
                state_dir = record(local_harness, sid).state_dir  # type: ignore[attr-defined]
                assert not {"lower", "root", "rw"} & set(os.listdir(state_dir))

    go(aio, scenario())


@pytest.mark.parametrize(
    "path",
    [
        "/proc/config.gz", "/proc/cmdline", "/proc/slabinfo", "/proc/vmallocinfo",
        "/proc/kallsyms", "/proc/kcore", "/proc/keys", "/proc/timer_list",
        "/proc/sched_debug", "/proc/iomem",
    ],
)  # fmt: skip
def test_kernel_details_are_masked(aio: asyncio.Runner, local_harness: Harness, path: str) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, sh(f"head -c 64 {path}"))
            assert r.stdout == b"", (path, r.stdout)

    go(aio, scenario())


def test_acpi_and_firmware_tables_are_empty(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            for d in ("/proc/acpi", "/sys/firmware", "/sys/kernel/debug", "/sys/kernel/security"):
                r = await run(local_harness, sid, sh(f"ls -A {d} 2>/dev/null"))
                assert r.stdout == b"", (d, r.stdout)

    go(aio, scenario())


def test_only_unix_inet_and_route_netlink_sockets(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    script = (
        "import socket, errno\n"
        "def tryit(*args):\n"
        "    try:\n"
        "        socket.socket(*args).close(); return 'ok'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "print(tryit(40, socket.SOCK_STREAM))  # AF_VSOCK\n"
        "print(tryit(40, socket.SOCK_DGRAM))\n"
        "print(tryit(17, socket.SOCK_RAW, 0))  # AF_PACKET\n"
        "print(tryit(38, socket.SOCK_SEQPACKET, 0))  # AF_ALG\n"
        "print(tryit(16, socket.SOCK_RAW, 9))  # netlink audit\n"
        "print(tryit(16, socket.SOCK_RAW, 0))  # netlink route\n"
        "print(tryit(socket.AF_INET, socket.SOCK_STREAM))\n"
        "print(tryit(socket.AF_INET6, socket.SOCK_DGRAM))\n"
        "print(tryit(socket.AF_UNIX, socket.SOCK_STREAM))\n"
        "try:\n"
        "    socket.socketpair(socket.AF_INET); print('pair ok')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "a, b = socket.socketpair(); print('unix pair ok')\n"
    )

    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON) as sid:
            r = await run(local_harness, sid, ["python3", "-c", script])
            assert r.stdout.decode().split() == [
                "EAFNOSUPPORT", "EAFNOSUPPORT", "EAFNOSUPPORT", "EAFNOSUPPORT",
                "EPROTONOSUPPORT", "ok", "ok", "ok", "ok", "EAFNOSUPPORT", "unix", "pair", "ok",
            ], r.stderr  # fmt: skip

    go(aio, attack())


def test_sandbox_root_is_an_unprivileged_host_uid(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        async with (
            local_harness.sandbox(command=("sleep", "1000")) as a,
            local_harness.sandbox(command=("sleep", "1000")) as b,
        ):
            ranges = []
            for sid in (a, b):
                r = await run(
                    local_harness, sid, sh("id -u; touch /tmp/mine; cat /proc/self/uid_map")
                )
                lines = r.stdout.decode().split("\n")
                assert lines[0] == "0"  # root inside
                inside, host_first, count = (int(x) for x in lines[1].split())
                assert (inside, count) == (0, 65536) and host_first >= 1 << 16
                rec = record(local_harness, sid)
                status = Path(f"/proc/{rec.agent_pid}/status").read_text()  # type: ignore[attr-defined]
                uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
                assert {int(u) for u in uids} == {host_first}
                made = Path(f"/proc/{rec.agent_pid}/root/tmp/mine")  # type: ignore[attr-defined]
                assert made.stat().st_uid == host_first  # on the host: nobody we know
                ranges.append(host_first)
            assert abs(ranges[0] - ranges[1]) >= 65536, "each sandbox gets its own id range"

    go(aio, scenario())


def test_a_fork_bomb_loses_only_its_own_processes(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600); os._exit(0)\n"
        "    except OSError:\n"
        "        break\n"
    )

    async def attack() -> None:
        for memory, pids in ((192 << 20, 4096), (1 << 30, 512)):  # memory-bound, then PID-bound
            async with local_harness.sandbox(
                image=PYTHON, memory_bytes=memory, pids_max=pids
            ) as sid:
                await run(local_harness, sid, ["python3", "-c", bomb])
                for _ in range(3):  # the sandbox keeps answering, PID 1 included
                    r = await run(local_harness, sid, ["echo", "alive"])
                    assert r.stdout == b"alive\n", (memory, pids, r)
                assert (await local_harness.backend.state(sid)).state == "running"
                assert await local_harness.backend.read_file(sid, "/etc/hostname")

    go(aio, attack())


def test_a_memory_hog_loses_only_itself(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    hog = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"

    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON, memory_bytes=128 << 20) as sid:
            r = await run(local_harness, sid, ["python3", "-c", hog])
            assert r.code == 137
            assert (await run(local_harness, sid, ["echo", "alive"])).stdout == b"alive\n"

    go(aio, attack())


def test_a_hostile_image_cannot_redirect_mounted_files(
    aio: asyncio.Runner,
    local_harness: Harness,
    host_secret: tuple[Path, Path],
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    """An image whose directories lead through magic links: mounted files land inside or
    the create fails with a clear error; nothing appears on the host."""
    import shutil
    import subprocess

    from sandboxd.backends.base import MountedFile
    from sandboxd.backends.errors import SandboxStartError

    _secret, target = host_secret
    rootfs = tmp_path / "hostile-rootfs"
    subprocess.run(["cp", "-a", str(busybox_rootfs), str(rootfs)], check=True)
    os.symlink("/proc/self/fd/3/../../../../../../..", rootfs / "escape")
    os.symlink("/proc/1/root", rootfs / "pid1root")
    (rootfs / "etc" / "hostname").unlink()
    os.symlink("/proc/self/fd/4", rootfs / "etc" / "hostname")
    hostile = publish(image_store, rootfs, "hostile")

    async def attack() -> None:
        for path in (f"/escape{target}/planted", "/pid1root/etc/planted"):
            spec = local_harness.spec(image=hostile, mounted_files=(MountedFile(path, b"x"),))
            with pytest.raises(SandboxStartError) as info:
                await local_harness.backend.create(spec)
            if path.startswith("/pid1root"):  # /proc/1/root exists: the link is refused
                assert "refused: magic link" in str(info.value), info.value
            with contextlib.suppress(Exception):
                await local_harness.backend.destroy(spec.sandbox_id)
        # a file placed over the image's magic-link symlink is refused, not followed
        spec = local_harness.spec(
            image=hostile, mounted_files=(MountedFile("/etc/hostname", b"mine"),)
        )
        with pytest.raises(SandboxStartError):
            await local_harness.backend.create(spec)
        with contextlib.suppress(Exception):
            await local_harness.backend.destroy(spec.sandbox_id)

    try:
        go(aio, attack())
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
