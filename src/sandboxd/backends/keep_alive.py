"""The default main command, "stay alive until stopped", and how to recognise it.

Every client sends the same command when the user gives none: ``/bin/sh -c 'trap "exit 0"
TERM INT; sleep infinity & wait'`` (v1beta2.md §3, v1.md, our own client). It runs no work;
it only keeps the sandbox up and makes a stop end it with exit code 0 rather than 143.

Why recognise it: run as written, it costs every idle sandbox a shell and a ``sleep``
process (two program executions and a fork at create time, about 1.5 ms of CPU, and
0.2 MiB), puts a shell start on the path of every create and of every warm-pool claim, and
fails on an image without ``/bin/sh``. A backend may instead keep the sandbox up itself and
end it with exit code 0 when it is stopped or its lifetime is over, which is everything the
command does: the local backend's agent (PID 1 of the sandbox) does exactly that. Only this
exact argument vector is recognised; any other command, however close, runs as given.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["KEEP_ALIVE", "keeps_alive"]

KEEP_ALIVE: tuple[str, ...] = ("/bin/sh", "-c", 'trap "exit 0" TERM INT; sleep infinity & wait')
"""The main command of a sandbox started without one (what every client sends then)."""


def keeps_alive(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is the default keep-alive command, and nothing else."""
    return tuple(argv) == KEEP_ALIVE
