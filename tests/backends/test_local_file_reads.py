"""Reads through the agent's file worker: spliced where the kernel can, copied where not.

``fileops._copy`` moves a regular file into the pipe to the runner with ``splice`` (the
pages go by reference); ``/proc`` files and character devices refuse it (``EINVAL``) and
are copied through a buffer instead. Each kind must arrive whole and exact, and the size
limit must hold for both.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import FileTooLarge


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_regular_proc_and_device_files_read_whole(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        backend = local_harness.backend
        async with local_harness.sandbox() as sid:
            # 5 MiB and a ragged tail: several splices, the last one short.
            made = await run(
                local_harness,
                sid,
                sh("head -c 5242891 /dev/urandom > /tmp/big && sha256sum /tmp/big"),
            )
            want = made.stdout.split()[0].decode()
            got = await backend.read_file(sid, "/tmp/big")
            assert len(got) == 5242891 and hashlib.sha256(got).hexdigest() == want
            empty = await run(local_harness, sid, sh(": > /tmp/empty"))
            assert empty.code == 0
            assert await backend.read_file(sid, "/tmp/empty") == b""
            # /proc files cannot be spliced (size 0 in stat, content made on read).
            status = await backend.read_file(sid, "/proc/self/status")
            assert status.startswith(b"Name:") and b"\nPid:" in status
            cpuinfo = await run(local_harness, sid, ["cat", "/proc/cpuinfo"])
            assert await backend.read_file(sid, "/proc/cpuinfo") == cpuinfo.stdout
            # A device never ends: the limit stops it, for the buffered copy too.
            with pytest.raises(FileTooLarge):
                await backend.read_file(sid, "/dev/zero", max_bytes=3 << 20)
            assert await backend.read_file(sid, "/dev/null") == b""
            with pytest.raises(FileTooLarge):
                await backend.read_file(sid, "/tmp/big", max_bytes=5242890)
            assert len(await backend.read_file(sid, "/tmp/big", max_bytes=5242891)) == 5242891

    go(aio, scenario())
