"""The runner's own limits: exec slots per sandbox and per runner, sizes checked again.

The supervisor runs over the stand-in backend and the stand-in control plane's exec server
(``exec_standin.py``), so what is pinned is the runner's decision: which exec is refused,
with which in-band code, and that nothing reached the backend. The end-to-end flood with
real sandboxes is ``tests/e2e/test_exec_flood_e2e.py``.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd._proto import runner_pb2
from sandboxd.controlplane.limits import MAX_ARG_BYTES, MAX_ENV_VALUE_BYTES, MAX_FILE_PATH_CHARS
from sandboxd.runner.exec_limits import (
    EXEC_LIMIT_CODE,
    RUNNER_LIMIT_CODE,
    ExecSlots,
    runner_exec_budget,
)
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start
from tests.unit.runner.test_runner_exec_relay import kinds, open_exec


def test_slots_count_per_sandbox_and_in_total() -> None:
    slots = ExecSlots(per_sandbox=2, total=3)
    assert slots.acquire("a") is None and slots.acquire("a") is None
    code, message = slots.acquire("a") or ("", "")
    assert code == EXEC_LIMIT_CODE and "max_execs_per_sandbox=2" in message
    assert slots.acquire("b") is None
    assert (slots.acquire("c") or ("",))[0] == RUNNER_LIMIT_CODE
    slots.release("a")
    assert slots.acquire("c") is None
    assert (slots.running("a"), slots.running()) == (1, 3)
    slots.release("zzz")  # unknown: ignored
    assert slots.running() == 3


def test_runner_budget_follows_the_descriptor_limit() -> None:
    assert runner_exec_budget(20_000) == (20_000 - 1024) // 8
    assert runner_exec_budget(1024) == 16  # never nothing
    assert runner_exec_budget() >= 16


def test_the_runner_raises_its_soft_descriptor_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    # The child lowers its own soft limit first (no preexec_fn: forking a process that runs
    # gRPC threads and then running Python in the child can abort it).
    script = (
        "import resource\n"
        "_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from sandboxd.runner.exec_limits import raise_nofile_limit\n"
        "print(*raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, limit = (int(x) for x in out)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert (before, after, limit) == (256, expected, hard)


def test_one_exec_over_the_cap_is_refused_others_run(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        for sid in ("sb-1", "sb-2"):
            assert not (await rig.run(sid, **start(spec(sid)))).HasField("failure")
        for n in range(2):
            open_exec(rig, f"hold{n}", "sleep")
            await (await rig.execs.stream(f"hold{n}")).next()  # ready: it runs
        open_exec(rig, "over", "echo", "x")
        frames = await (await rig.execs.stream("over")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == EXEC_LIMIT_CODE
        assert "max_execs_per_sandbox=2" in frames[0].error.message
        assert len(rig.backend.world["sb-1"].execs) == 2  # the refused one never started
        open_exec(rig, "other", "echo", "fine", sandbox_id="sb-2")
        frames = await (await rig.execs.stream("other")).until_end()
        assert kinds(frames) == ["ready", "output", "exit"]
        rig.execs.streams["hold0"].end_call()  # one ends: its slot is free again
        async with asyncio.timeout(5):
            while rig.supervisor._exec_slots.running("sb-1") >= 2:
                await asyncio.sleep(0.01)
        open_exec(rig, "again", "echo", "y")
        frames = await (await rig.execs.stream("again")).until_end()
        assert kinds(frames) == ["ready", "output", "exit"]

    run_rig(tmp_path, body, max_execs_per_sandbox=2)


def test_oversized_requests_are_refused_by_the_runner_too(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        big = spec("sb-big", command=["sh", "x" * (MAX_ARG_BYTES + 1)])
        result = await rig.run("big", **start(big))
        assert result.failure.reason == "CWSANDBOX_INVALID_ARGUMENT"
        assert result.failure.metadata["field"] == "command[1]"
        assert "sb-big" not in rig.backend.world  # nothing was created
        assert not (await rig.run("ok", **start(spec()))).HasField("failure")
        open_exec(rig, "e1", "echo", env={"K": "v" * (MAX_ENV_VALUE_BYTES + 1)})
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "INVALID_ARGUMENT"
        assert "env" in frames[0].error.message
        assert rig.backend.world["sb-1"].execs == []

    run_rig(tmp_path, body)


def test_file_paths_longer_than_the_limit_are_refused(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        assert not (await rig.run("ok", **start(spec()))).HasField("failure")
        path = "/" + "p" * MAX_FILE_PATH_CHARS
        write = runner_pb2.WriteFile(sandbox_id="sb-1", path=path, contents=b"x")
        result = await rig.run("w", write_file=write)
        assert result.failure.reason == "CWSANDBOX_INVALID_ARGUMENT"
        assert result.failure.metadata["field"] == "path"
        assert path not in rig.backend.world["sb-1"].files

    run_rig(tmp_path, body)


def test_an_exec_opened_twice_runs_once(tmp_path: Path) -> None:
    """The control plane resends an open on the next connection when the first one died; the
    first may have arrived after all, so the runner runs a stream id only once."""

    async def body(rig: Rig) -> None:
        assert not (await rig.run("sb-1", **start(spec("sb-1")))).HasField("failure")
        open_exec(rig, "twice", "echo", "once")
        open_exec(rig, "twice", "echo", "once")  # the resend
        frames = await (await rig.execs.stream("twice")).until_end()
        assert kinds(frames) == ["ready", "output", "exit"]
        open_exec(rig, "after", "echo", "next")  # a later exec: its own stream id, runs
        frames = await (await rig.execs.stream("after")).until_end()
        assert kinds(frames) == ["ready", "output", "exit"]
        assert len(rig.backend.world["sb-1"].execs) == 2  # "twice" ran once, "after" once

    run_rig(tmp_path, body)
