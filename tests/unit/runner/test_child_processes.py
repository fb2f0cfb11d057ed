"""Host commands end without a waiting thread each (sandboxd.child_processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import asyncio, threading
    from sandboxd.child_processes import watch_children_with_pidfds

    installed = watch_children_with_pidfds()
    seen = set()

    async def one(i):
        proc = await asyncio.create_subprocess_exec("sh", "-c", f"exit {i % 3}")
        seen.update(t.name for t in threading.enumerate())
        return await proc.wait()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    codes = asyncio.run(main())
    print(installed, codes == [i % 3 for i in range(20)], any("waitpid" in n for n in seen))
    """
)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ watches children with pidfds")
def test_twenty_host_commands_end_with_their_codes_and_no_waiting_thread() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["True", "True", "False"]  # installed, right exit codes, no waitpid thread
