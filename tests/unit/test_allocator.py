"""The server's allocator settings (allocator.py); each check runs in a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

SETUP = """
import ctypes, ctypes.util, time
from sandboxd.allocator import resident_bytes, return_large_buffers_to_the_system
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
MIB = 1 << 20
assert return_large_buffers_to_the_system() is True
def maps():
    return sum(1 for _ in open("/proc/self/maps"))
"""

BUFFERS = (
    SETUP
    + """
for _ in range(3):  # glibc would raise its threshold after the first free otherwise
    before = maps()
    block = libc.malloc(4 * MIB)
    assert maps() == before + 1, "a 4 MiB buffer is a mapping of its own"
    libc.free(block)
    assert maps() == before, "and it is gone when freed"
# A 1 MiB file buffer comes from the heap: freed and taken again, it is the same memory.
first = libc.malloc(MIB)
libc.free(first)
again = libc.malloc(MIB)
assert again == first, "a freed 1 MiB buffer is reused"
libc.free(again)
print("ok")
"""
)

TRIM = (
    SETUP
    + """
start = resident_bytes()
kept, big = [], []
for _ in range(96):  # 1 MiB buffers, each pinned in the heap by a smaller block after it
    block = libc.malloc(MIB)
    libc.memset(block, 1, MIB)
    big.append(block)
    kept.append(libc.malloc(160 * 1024))
for block in big:
    libc.free(block)
held = resident_bytes() - start
assert held > 64 * MIB, f"freed buffers between live blocks stay resident ({held >> 20} MiB)"
deadline = time.monotonic() + 15
while resident_bytes() - start > 24 * MIB and time.monotonic() < deadline:
    time.sleep(0.1)
left = resident_bytes() - start
assert left <= 24 * MIB, f"still {left >> 20} MiB more than at the start"
print("ok")
"""
)


def _run(script: str) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt and malloc_trim: Linux only")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_file_buffers_are_reused_and_larger_ones_go_when_freed() -> None:
    _run(BUFFERS)


def test_memory_freed_inside_the_heap_goes_back_within_seconds() -> None:
    """Freed buffers that glibc cannot give back itself (live blocks above them) are trimmed
    by the allocator's thread once the process has grown past its slack (32 MiB)."""
    _run(TRIM)
