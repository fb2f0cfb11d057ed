"""``freeze_startup_objects``: what exists when a server has started is left out of GC passes.

Run in a child interpreter: freezing is for the rest of a process's life, which a test must
not impose on the test runner itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import gc, weakref
    from sandboxd.startup_heap import freeze_startup_objects

    class Node:  # tracked by the collector, as most objects a server builds are
        def __init__(self, parent):
            self.parent = parent

    kept = [Node(None) for _ in range(50_000)]  # what start-up built and keeps
    def cycle():  # garbage the collector alone can free: a cycle nothing refers to
        node = Node(None)
        node.parent = node
        return weakref.ref(node)

    gc.disable()  # no pass of its own between the steps below
    startup_garbage = cycle()
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() >= 50_000, frozen
    assert startup_garbage() is None, "garbage of start-up was frozen, not collected"
    scanned = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert not any(id(node) in scanned for node in kept), "start-up objects still scanned"
    later = cycle()  # made after start-up: scanned, and collected as usual
    assert later() is not None
    gc.collect()
    assert later() is None, "garbage made after the freeze was not collected"
    print("ok")
    """
)


def test_objects_made_before_the_freeze_are_not_scanned_and_garbage_goes_first() -> None:
    """After the freeze no generation holds what start-up made, the cycles that were garbage
    at that moment were collected rather than frozen, and objects made afterwards are
    collected as before."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
