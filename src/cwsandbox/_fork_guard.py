"""What a ``fork()`` of a process that has used the client leaves to the child.

Why this exists: gRPC cannot be used again in a process forked from one whose gRPC is
running (the client's ``aio`` channels keep gRPC's threads busy, so gRPC skips its own fork
preparations). Measured with grpcio 1.85 on Linux:

* With gRPC's fork support on (its built-in default), gRPC restarts its threads in every
  child, and they crash there even in a child that never touches gRPC: 3 of 60 children
  that only computed and exited died of SIGSEGV. Children that used the client crashed,
  aborted or hung, 20 of 20.
* With it off, a child that leaves gRPC alone is safe (60 of 60), and one that uses it hangs.

So the client turns gRPC's fork support off, unless the process already chose a value of
``GRPC_ENABLE_FORK_SUPPORT`` (it is read when gRPC starts, so this module is imported
before anything imports ``grpc``), and a child that tries to open a channel after such a
fork gets :class:`~cwsandbox.exceptions.CWSandboxError` that says what to do instead of a
hang. Worker processes that use the client start with ``multiprocessing``'s ``spawn`` or
``forkserver`` method, or fork before the parent's first call.
"""

from __future__ import annotations

import os

from cwsandbox.exceptions import CWSandboxError  # imports no grpc

__all__ = ["FORK_SUPPORT_ENV", "refuse_after_fork"]

#: gRPC's switch for its fork handlers; the client's default is "false" (see above).
FORK_SUPPORT_ENV = "GRPC_ENABLE_FORK_SUPPORT"

os.environ.setdefault(FORK_SUPPORT_ENV, "false")

_opened_in: int | None = None
"""The pid of the process that opened the client's first channel (gRPC is running there)."""


def refuse_after_fork() -> None:
    """Before a channel is opened: refuse in a fork of a process that opened one already.

    Also records this process as one that uses gRPC, so that its own forks are refused.
    """
    global _opened_in  # noqa: PLW0603 - one fact per process, inherited by its forks
    pid = os.getpid()
    if _opened_in is not None and _opened_in != pid:
        raise CWSandboxError(
            f"this process was forked from process {_opened_in}, which had already used "
            "cwsandbox; gRPC cannot run again after such a fork. Start worker processes "
            "with multiprocessing's 'spawn' or 'forkserver' method, or fork before the "
            "first call.",
            reason="CWSANDBOX_USED_AFTER_FORK",
        )
    _opened_in = pid
