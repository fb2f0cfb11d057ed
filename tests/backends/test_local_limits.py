"""The largest exec and create that ``controlplane/limits.py`` lets through work on a real sandbox.

Worst case means every client-controlled byte is a control character, which JSON escapes to
six bytes: the agent's and zygote's one-message protocol must still carry it, and the
sandbox must still be there afterwards.
"""

from __future__ import annotations

import asyncio

from sandboxd.backends.base import MountedFile
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.controlplane import limits as L

CTRL = "\x01"


def worst_exec() -> tuple[list[str], dict[str, str]]:
    head = ["/bin/sh", "-c", 'echo "$#"', "arg0"]
    each = (L.MAX_ARGV_BYTES - sum(len(a) for a in head)) // (L.MAX_ARGS - len(head))
    argv = head + [CTRL * each] * (L.MAX_ARGS - len(head))
    room = L.PAYLOAD_BYTES - sum(len(a.encode()) for a in argv)
    names = [f"V{i:03d}" for i in range(L.MAX_ENV_ENTRIES)]
    value = CTRL * (min(room, L.MAX_ENV_BYTES) // L.MAX_ENV_ENTRIES - 4)
    env = dict.fromkeys(names, value)
    L.check_exec(argv, env, L.RUNNER_EXEC)  # within every limit
    return argv, env


def test_worst_case_exec_runs_and_the_sandbox_survives(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    argv, env = worst_exec()

    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            r = await run(local_harness, sid, argv, env=env)
            assert (r.code, r.stdout) == (0, f"{len(argv) - 4}\n".encode())
            last = f"V{L.MAX_ENV_ENTRIES - 1:03d}"
            r = await run(local_harness, sid, sh(f'printf %s "${last}" | wc -c'), env=env)
            assert r.stdout.strip() == str(len(env[last])).encode()
            assert (await run(local_harness, sid, ["echo", "alive"])).stdout == b"alive\n"

    aio.run(asyncio.wait_for(scenario(), 60))


def test_worst_case_create_starts(aio: asyncio.Runner, local_harness: Harness) -> None:
    workdir = "/" + CTRL * (L.MAX_PATH_BYTES - 3)  # made by the mounted file below
    paths = [f"/m{i:02d}/" + CTRL * 60 for i in range(L.MAX_MOUNTED_FILES - 1)]
    paths.append(workdir + "/f")
    command = ["/bin/sh", "-c", "sleep 600", *([CTRL * 8] * (L.MAX_ARGS - 3))]
    used = sum(len(p) for p in paths) + len(workdir) + sum(len(a) for a in command)
    each = min(L.PAYLOAD_BYTES - used, L.MAX_ENV_BYTES) // L.MAX_ENV_ENTRIES - 4
    env = {f"V{i:03d}": CTRL * each for i in range(L.MAX_ENV_ENTRIES)}
    mounts = [(p, 1) for p in paths]
    L.check_start(command, env, mounts, L.RUNNER_START, workdir)  # within every limit
    files = tuple(MountedFile(p, b"x") for p in paths)

    async def scenario() -> None:
        async with local_harness.sandbox(
            command=tuple(command), env=env, mounted_files=files, workdir=workdir
        ) as sid:
            r = await run(local_harness, sid, sh(f'cat "{paths[-1]}"; pwd | wc -c'))
            assert r.stdout == b"x" + f"{len(workdir) + 1}\n".encode(), r

    aio.run(asyncio.wait_for(scenario(), 60))
