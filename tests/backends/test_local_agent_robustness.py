"""The agent (PID 1) against hostile or broken requests, oversized input and exhaustion.

The agent's socket is only reachable by the runner (it lives in a root-only state
directory), but the runner relays what the API sends, and a bug anywhere in front of it
must cost one request, never the sandbox. These tests talk to the agent's socket directly,
as the runner does, with messages no honest runner sends, and check that it keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from sandboxd.backends.conformance import Harness, collect, run, sh
from sandboxd.backends.local import LocalBackend, log_budget, protocol, supervisor
from sandboxd.images import ImageStore

from .image_refs import BUSYBOX


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def agent_socket(h: Harness, sid: str) -> str:
    return str(h.backend._records[sid].agent_socket)  # type: ignore[attr-defined]


def raw_exchange(path: str, payload: bytes, fds: list[int] | None = None) -> bytes:
    """Send one raw datagram and return the reply (b"" when the agent hung up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(path)
        sock.setsockopt(socket.SOL_SOCKET, 32, len(payload) + 65536)  # SO_SNDBUFFORCE
        if fds:
            socket.send_fds(sock, [payload], fds)
        else:
            sock.send(payload)
        sock.settimeout(10)
        data, got, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
        for fd in got:
            os.close(fd)
        return bytes(data)


def test_agent_survives_malformed_and_oversized_messages(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def attack() -> None:
        async with local_harness.sandbox() as sid:
            path = agent_socket(local_harness, sid)
            pipes = [os.pipe() for _ in range(6)]
            bad: list[tuple[bytes, list[int]]] = [
                (b"not json at all", []),
                (b"\xff\xfe\x00binary", []),
                (b"[1, 2, 3]", []),
                (b'"just a string"', []),
                (b"{" * 100_000, []),  # deep nesting
                (json.dumps({"op": "exec", "argv": 5}).encode(), []),
                (json.dumps({"op": "exec", "argv": ["true"], "env": ["x"]}).encode(), []),
                (json.dumps({"op": "exec", "argv": []}).encode(), []),
                (json.dumps({"op": "exec", "argv": ["a\u0000b"]}).encode(), []),
                (json.dumps({"op": "exec", "argv": ["true"], "cwd": 7}).encode(), []),
                (
                    json.dumps({"op": "exec", "argv": ["x"], "tty": True, "size": "x"}).encode(),
                    [],
                ),
                (json.dumps({"op": "read_file", "path": "/etc/hostname"}).encode(), []),
                (json.dumps({"op": "write_file", "path": 12}).encode(), [pipes[0][0]]),
                (json.dumps({"op": "write_file", "path": "rel/ative"}).encode(), [pipes[1][0]]),
                (json.dumps({"op": "stop", "grace": "soon"}).encode(), []),
                (json.dumps({"op": "no-such-op"}).encode(), []),
                (json.dumps({"no": "op"}).encode(), []),
                (b"{}" + b" " * (4 << 20), []),  # over the 4 MiB message limit
                (json.dumps({"op": "ping"}).encode(), [p[0] for p in pipes]),  # too many fds
            ]
            for payload, fds in bad:
                reply = raw_exchange(path, payload, fds)
                assert b'"ok":true' not in reply.replace(b" ", b""), (payload[:60], reply)
                pong = json.loads(raw_exchange(path, b'{"op":"ping"}'))
                assert pong["ok"] is True, payload[:60]
            for r, w in pipes:
                for fd in (r, w):
                    os.close(fd)
            r = await run(local_harness, sid, ["echo", "still serving"])
            assert r.stdout == b"still serving\n"

    go(aio, attack())


def test_large_arguments_run_or_fail_cleanly(aio: asyncio.Runner, local_harness: Harness) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            big = "x" * 100_000  # over the 64 KiB that used to kill the agent
            r = await run(local_harness, sid, sh(f"printf %s '{big}' | wc -c"))
            assert (r.code, r.stdout.strip()) == (0, b"100000")
            r = await run(local_harness, sid, ["echo", "y" * 200_000])  # > MAX_ARG_STRLEN
            assert r.code == 126 and b"Argument list too long" in r.stderr
            env = {f"V{i}": "z" * 1000 for i in range(500)}
            r = await run(local_harness, sid, sh("echo $V499 | wc -c"), env=env)
            assert r.stdout.strip() == b"1001"
            assert (await run(local_harness, sid, ["true"])).code == 0

    go(aio, scenario())


def test_concurrent_execs_are_capped_per_sandbox(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "capped", images=image_store, max_execs=4)
        h = Harness(backend, BUSYBOX, None, lambda: backend)
        try:
            async with h.sandbox() as sid:
                held = [await backend.exec(sid, ["sleep", "30"]) for _ in range(4)]
                async with asyncio.timeout(10):
                    while (await backend.stats(sid)).pids < 5:  # agent + four sleeps
                        await asyncio.sleep(0.01)
                r = await run(h, sid, ["echo", "one too many"])
                assert r.code == 126 and b"too many concurrent execs" in r.stderr
                for session in held:
                    await session.close()
                r = await run(h, sid, ["echo", "room again"])
                assert r.stdout == b"room again\n"
        finally:
            await backend.close()

    go(aio, scenario())


def test_many_idle_connections_do_not_block_others(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            path = agent_socket(local_harness, sid)
            idle = []
            try:
                for _ in range(300):  # connected, never sending anything
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    s.connect(path)
                    idle.append(s)
                session = await local_harness.backend.exec(sid, ["echo", "through"])
                assert (await collect(session)).stdout == b"through\n"
            finally:
                for s in idle:
                    s.close()

    go(aio, scenario())


def test_log_budget_evicts_oldest_ended_logs_first(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    chunk = 120_000

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "budget", images=image_store, log_budget_bytes=300_000)
        h = Harness(backend, BUSYBOX, None, lambda: backend)
        try:
            ids = []
            for n in range(3):
                cmd = ("/bin/sh", "-c", f"head -c {chunk} /dev/zero | tr '\\0' '{n}'")
                spec = h.spec(command=cmd)
                await backend.create(spec)
                await backend.start(spec.sandbox_id)
                await backend.wait(spec.sandbox_id)
                await backend.stop(spec.sandbox_id, 1)
                ids.append(spec.sandbox_id)
            await backend._budget.settle()  # the check runs in the background after an end
            texts = [b"".join([c.data async for c in backend.logs(sid)]) for sid in ids]
            assert log_budget.EVICTED_NOTICE in texts[0]  # oldest went first
            assert texts[1] == b"1" * chunk and texts[2] == b"2" * chunk
            total = sum(
                (Path(backend.sandboxes_dir) / sid / "main.log").stat().st_size for sid in ids
            )
            assert total <= 300_000
            for sid in ids:
                await backend.destroy(sid)
        finally:
            await backend.close()

    go(aio, scenario())
    assert protocol.MAX_MESSAGE >= 2 << 20  # room for the API's largest exec request


def test_killing_the_keeper_ends_its_sandbox_and_frees_everything(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """SIGKILL on a sandbox's keeper: PID 1 dies with it (parent-death signal), the runner
    sees a killed sandbox, and its cgroup and id range are released."""

    async def scenario() -> None:
        b = local_harness.backend
        spec = local_harness.spec(command=("sleep", "1000"))
        await b.create(spec)
        await b.start(spec.sandbox_id)
        rec = b._records[spec.sandbox_id]  # type: ignore[attr-defined]
        cgroup_dirs, ids = rec.cgroup.unique_dirs, rec.ids
        os.kill(rec.keeper_pid, 9)
        assert await asyncio.wait_for(b.wait(spec.sandbox_id), 10) == 137
        state = await b.state(spec.sandbox_id)
        assert (state.state, state.exit_code) == ("exited", 137)
        async with asyncio.timeout(10):
            while any(Path(d).exists() for d in cgroup_dirs):
                await asyncio.sleep(0.02)
        # A dying PID 1 leaves its cgroup before it has waited for the processes of its
        # namespace (``sleep`` here) to be reaped: the cgroup can be gone a moment before it.
        async with asyncio.timeout(10):
            while Path(f"/proc/{rec.agent_pid}").exists() and not _zombie(rec.agent_pid):
                await asyncio.sleep(0.02)
        claim = Path("/run/sandboxd/idmap") / str(ids.slot)
        async with asyncio.timeout(10):
            while claim.exists():
                await asyncio.sleep(0.02)
        await b.destroy(spec.sandbox_id)

    go(aio, scenario())


def test_a_killed_zygote_leaves_running_sandboxes_alone(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "zygote-kill", images=image_store)
        h = Harness(backend, BUSYBOX, None, lambda: backend)
        try:
            async with h.sandbox(command=("sleep", "1000")) as first:
                zygote = backend._zygote._proc.pid  # type: ignore[union-attr]
                os.kill(zygote, 9)
                async with asyncio.timeout(10):
                    while Path(f"/proc/{zygote}").exists() and not _zombie(zygote):
                        await asyncio.sleep(0.02)
                assert (await run(h, first, ["echo", "still"])).stdout == b"still\n"
                async with h.sandbox() as second:  # a new zygote is started on demand
                    assert (await run(h, second, ["echo", "new"])).stdout == b"new\n"
                await backend.stop(first, 1)
                assert (await backend.state(first)).reason == "stopped"
        finally:
            await backend.close()

    go(aio, scenario())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_zygote_that_does_not_exit_when_asked_is_killed(
    aio: asyncio.Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown is asked only when nothing runs: a zygote that misses the request (here it
    is stopped) is ended by its pid instead of idling on after its backend closed."""
    monkeypatch.setattr(supervisor, "SHUTDOWN_TIMEOUT", 0.5)
    zygote = supervisor.ZygoteClient(tmp_path / "run")
    pid = 0

    async def scenario() -> None:
        nonlocal pid
        await zygote.ensure()
        pid = zygote._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        await zygote.shutdown()

    try:
        go(aio, scenario())
        assert pid and not Path(f"/proc/{pid}").exists()  # killed and reaped
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_a_spawn_that_names_a_network_but_brings_no_namespace_is_refused(
    aio: asyncio.Runner, tmp_path: Path
) -> None:
    """The runner's network namespace travels as a descriptor with the spawn request. A
    request that says it has one but comes without it must fail with a clear error, never
    start the sandbox in a namespace of its own (a sandbox with egress silently offline)."""
    zygote = supervisor.ZygoteClient(tmp_path / "run")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    layer = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # any descriptor
    request = {"state_dir": str(state), "files": [], "netns": True, "uid_first": 0}

    async def scenario() -> dict[str, object]:
        await zygote.ensure()
        try:
            return await zygote.spawn(request, fds=(layer,))
        finally:
            await zygote.shutdown()

    try:
        reply = go(aio, scenario())
    finally:
        os.close(layer)
    assert isinstance(reply, dict) and reply.get("ok") is False
    assert reply.get("error") == "no network namespace came with the request"
    assert not (state / "exit.json").exists()


def test_a_zygote_of_an_earlier_version_is_asked_to_exit_before_a_new_one_starts(
    aio: asyncio.Runner, tmp_path: Path
) -> None:
    """A zygote outlives its runner and runs the code it was started with. A runner of a
    newer version finds one listening on the old socket name: it asks it to exit (its
    sandboxes would keep running) and starts its own, on the versioned name; nothing of its
    own requests goes to the old one."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    old = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old.bind(str(run_dir / protocol.EARLIER_ZYGOTE_SOCKETS[0]))
    old.listen(4)
    heard: list[object] = []

    def earlier_zygote() -> None:  # what an earlier version's zygote does with a message
        conn, _ = old.accept()
        with conn:
            heard.append(protocol.recv(conn)[0])

    listener = threading.Thread(target=earlier_zygote, daemon=True)
    listener.start()
    zygote = supervisor.ZygoteClient(run_dir)

    async def scenario() -> None:
        await zygote.ensure()
        try:
            assert (run_dir / protocol.ZYGOTE_SOCKET).exists()
        finally:
            await zygote.shutdown()

    try:
        go(aio, scenario())
        listener.join(10)
        assert heard == [{"op": "shutdown"}]
        assert not (run_dir / protocol.EARLIER_ZYGOTE_SOCKETS[0]).exists()
    finally:
        old.close()


def test_signals_the_runner_inherited_as_ignored_are_default_in_the_sandbox(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A runner whose parent ignored a signal (here SIGUSR2) inherits that, and ignored
    dispositions survive ``execve``: the zygote notes them once (``agent.ignored_signals``)
    and every agent resets them, so neither the main process nor an exec starts with a
    standard signal ignored. (glibc's ``posix_spawn`` leaves its two internal signals, 32
    and 33, ignored in every child it starts, which no program sends; masked out here.)"""
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # inherited by the new zygote
    try:

        async def scenario() -> tuple[bytes, bytes, bytes]:
            backend = LocalBackend(tmp_path / "nohup", images=image_store)
            h = Harness(backend, BUSYBOX, None, lambda: backend)
            try:
                async with h.sandbox(command=("grep", "SigIgn", "/proc/self/status")) as sid:
                    zygote = backend._zygote._proc
                    assert zygote is not None
                    premise = Path(f"/proc/{zygote.pid}/status").read_text()
                    status = await backend.wait(sid)
                    main = b"".join([chunk.data async for chunk in backend.logs(sid)])
                    assert status == 0, main
                async with h.sandbox(command=("sleep", "1000")) as sid:
                    exec_status = await run(h, sid, ["grep", "SigIgn", "/proc/self/status"])
                    agent = await run(h, sid, ["grep", "SigIgn", "/proc/1/status"])
                return premise.encode(), main, exec_status.stdout + agent.stdout
            finally:
                await backend.close()

        premise, main, execs = go(aio, scenario())  # type: ignore[misc]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    zygote_ignored = int(premise.split(b"SigIgn:")[1].split()[0], 16)
    assert zygote_ignored & (1 << (signal.SIGUSR2 - 1)), premise  # the premise holds
    glibc_internal = (1 << 31) | (1 << 32)
    assert int(main.split()[1], 16) & ~glibc_internal == 0, main
    exec_line, agent_line = execs.splitlines()
    assert int(exec_line.split()[1], 16) & ~glibc_internal == 0, execs
    # The agent (PID 1) itself ignores only SIGPIPE, as Python does, to see EPIPE (not even
    # SIGXFSZ, which Python ignores too); every child gets it back (spawn.spawn_fast).
    assert int(agent_line.split()[1], 16) == 1 << (signal.SIGPIPE - 1), execs


def test_a_zygote_asked_to_exit_with_a_reply_unread_exits_by_itself(
    aio: asyncio.Runner, tmp_path: Path
) -> None:
    """A reply still unread on the runner's side when it asks the zygote to exit (a user
    namespace asked for ahead, whose caller the close cancelled): the zygote still reads the
    request and exits by itself (status 0). Before, the runner closed the connection right
    after the request, the kernel reset it for the unread reply, the zygote's read failed
    before it reached the request, and it was killed (SIGKILL) ``SHUTDOWN_TIMEOUT`` later."""
    zygote = supervisor.ZygoteClient(tmp_path / "run")
    proc: subprocess.Popen[bytes] | None = None

    async def scenario() -> None:
        nonlocal proc
        await zygote.ensure()
        proc, sock = zygote._proc, zygote._sock
        assert proc is not None and sock is not None
        protocol.send(sock, {"op": "ping", "req": 0})
        # Without yielding to the loop (which would read it): the reply is there, unread.
        assert select.select([sock], [], [], 10)[0], "no reply to the ping"
        # Busy (stopped) while the request comes, so the runner's side acts first.
        os.kill(proc.pid, signal.SIGSTOP)
        asyncio.get_running_loop().call_later(0.2, os.kill, proc.pid, signal.SIGCONT)
        await zygote.shutdown()

    try:
        go(aio, scenario())
        assert proc is not None and proc.returncode == 0, "the zygote was killed"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_request_sent_to_a_zygote_already_dead_fails_as_lost(
    aio: asyncio.Runner, tmp_path: Path
) -> None:
    """The zygote died and the loop has not seen its end yet: the request's send fails
    (nobody holds the other end), and the caller gets ``ZygoteLost`` (nothing was read, so
    a create may go again), not a bare ``BrokenPipeError``."""
    zygote = supervisor.ZygoteClient(tmp_path / "run")

    async def scenario() -> None:
        await zygote.ensure()
        proc = zygote._proc
        assert proc is not None
        proc.kill()
        proc.wait()  # without yielding to the loop, which would see the end first
        with pytest.raises(supervisor.ZygoteLost, match="zygote connection lost"):
            await zygote._call({"op": "ping"}, 10)
        await zygote.shutdown()

    go(aio, scenario())
