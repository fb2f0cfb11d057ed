"""Host commands of sandbox networking (``ip``, ``iptables-restore``): run, niced, ended.

Every command that makes or removes a sandbox network's parts goes through :func:`run`, so
two rules hold everywhere: a command whose caller was cancelled is killed and waited for
before the caller's rollback looks for what it made, and a command made ahead of need (at
the lowest CPU priority, so possibly seconds late on a busy host) dies with its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil

LOWEST_PRIORITY = 19
"""The nice value of commands for networks made ahead of need."""
_SETPRIV = shutil.which("setpriv")  # util-linux, as ``nsenter`` is


class NetworkError(RuntimeError):
    """A host networking command failed."""


async def run(
    *argv: str, stdin: bytes | None = None, check: bool = True, nice: bool = False
) -> str:
    """Run a host command; ``NetworkError`` with its stderr when it fails and ``check``.

    ``nice``: the command yields the CPU to everything else (work made ahead of need). Set
    on the child once it is started rather than by running it under ``nice``: one program
    execution fewer, and a ``preexec_fn`` would make Python fork instead of ``vfork``.
    Such a command can start seconds late on a busy host, so it also dies with this process
    (``setpriv --pdeathsig``): if the runner is killed meanwhile, the next one reaps the
    network it was making, and a command that ran after that reap would leave its parts
    behind for good. Commands on a create's path run at once and need no such guard.
    """
    guard = (_SETPRIV, "--pdeathsig", "KILL") if nice and _SETPRIV is not None else ()
    proc = await asyncio.create_subprocess_exec(
        *guard,
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if nice:
        with contextlib.suppress(OSError):  # it may have exited already
            os.setpriority(os.PRIO_PROCESS, proc.pid, LOWEST_PRIORITY)
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:
        await _end(proc)
        raise
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill a command whose caller was cancelled, and wait until it has exited.

    Why: the caller's rollback (``teardown``) comes next. A command left running would make
    its namespace, veth or rules *after* the rollback looked for them, with the subnet
    already released: a leftover veth holding an address that the next sandbox gets too,
    which then reaches nothing. A niced command on a busy host can start seconds late.
    Killed, it has made part of its work at most, which teardown removes. Waiting cannot be
    cancelled again: the rollback must not start before the command is gone.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    exited = asyncio.ensure_future(proc.wait())
    while not exited.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(exited)
