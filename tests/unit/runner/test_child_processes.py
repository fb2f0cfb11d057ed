"""Host commands end without a waiting thread each (sandboxd.child_processes).

Each probe runs in a fresh interpreter: the child watcher is the process's, and these tests
must neither see one another's nor leave one behind in the test worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import asyncio, threading
    from sandboxd.child_processes import children_watched_with_pidfds

    seen = set()

    async def one(i):
        proc = await asyncio.create_subprocess_exec("sh", "-c", f"exit {i % 3}")
        seen.update(t.name for t in threading.enumerate())
        return await proc.wait()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    with children_watched_with_pidfds() as installed:
        codes = asyncio.run(main())
    print(installed, codes == [i % 3 for i in range(20)], any("waitpid" in n for n in seen))
    """
)

OTHER_LOOP = textwrap.dedent(
    """
    import asyncio
    from sandboxd.child_processes import children_watched_with_pidfds

    async def start_one():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
        return await proc.wait()

    long_lived = asyncio.Runner()  # as a test session's loop, or an embedding program's
    before = long_lived.run(start_one())
    with children_watched_with_pidfds() as installed:
        inside = asyncio.run(start_one())  # the runner's own loop
    try:
        after = long_lived.run(start_one())
    except RuntimeError as exc:
        after = repr(exc)
    print(installed, before, inside, after)
    """
)


def _run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ watches children with pidfds")
def test_twenty_host_commands_end_with_their_codes_and_no_waiting_thread() -> None:
    out = _run(PROBE)
    assert out == ["True", "True", "False"]  # installed, right exit codes, no waitpid thread


def test_after_the_block_another_event_loop_still_starts_children() -> None:
    """The runner's command run in-process (a test, an embedding program) installed the
    pidfd watcher for good, and it serves only the loop last set: a long-lived loop of the
    same process then failed every child it started ("get_child_watcher() is not
    activated"). A CI run's test session lost its backend's firewall removals to it."""
    out = _run(OTHER_LOOP)
    assert out[1:] == ["7", "7", "7"], out
