"""The server fixes glibc's mmap threshold (allocator.py); checked in a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import ctypes, ctypes.util
from sandboxd.allocator import return_large_buffers_to_the_system
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
assert return_large_buffers_to_the_system() is True
# A freed 1 MiB buffer is unmapped at once: the process's mappings shrink back.
def maps():
    return sum(1 for _ in open("/proc/self/maps"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
for _ in range(3):  # glibc would raise its threshold after the first free otherwise
    before = maps()
    block = libc.malloc(1 << 20)
    assert maps() == before + 1, "a 1 MiB buffer is a mapping of its own"
    libc.free(block)
    assert maps() == before, "and it is gone when freed"
print("ok")
"""


def test_large_buffers_are_mappings_of_their_own_and_go_when_freed() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
