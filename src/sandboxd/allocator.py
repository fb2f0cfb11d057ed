"""Large buffers go back to the system when freed, so a server's memory follows its load.

Why: file bytes cross the control plane and the runner in 1 MiB buffers, allocated and
freed by several threads (gRPC's, the event loop's). glibc serves a buffer that large with
its own ``mmap`` only until the first one is freed; from then on it raises its threshold and
carves such buffers out of its heaps and per-thread arenas, where freed ones stay resident
and fragment. Under load a 1 GiB transfer left ``sandboxd up`` 80–300 MiB larger than it
started, though at no moment did it hold more than a few frames. A fixed threshold (setting
it turns glibc's adjustment off) keeps every buffer of 256 KiB or more a mapping of its
own, unmapped when freed: 23–41 MiB of growth under the same load.

The price: each such buffer is mapped and faulted in afresh, about 0.5 s more of the
server's CPU per GiB streamed (1 GiB writes 10–20 % slower in alternating runs). Memory that
stays bounded whatever runs beside it comes first; reusing the buffers would remove both.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_large_buffers_to_the_system(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; whether it was set.

    False where the C library is not glibc (no ``mallopt``) or refused the value; nothing
    else changes then.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
