"""Host commands of sandbox networking (``iptables-restore``, ``iptables``): run, niced, ended.

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
from collections import deque

from ..errors import BackendUnavailable, RunnerExhausted

LOWEST_PRIORITY = 19
"""The nice value of commands for networks made ahead of need."""
_SETPRIV = shutil.which("setpriv")  # util-linux, as ``nsenter`` is


class NetworkError(RuntimeError):
    """A host networking command failed."""


class NetworkPoolExhausted(NetworkError, RunnerExhausted):
    """Every subnet of the sandbox network pool is claimed (the runner's fault)."""

    def __init__(self, message: str) -> None:
        RunnerExhausted.__init__(self, "network", message)


class HostNetworkFailed(NetworkError, BackendUnavailable):
    """The host could not make a sandbox's network: its firewall or its links refused.

    Why the runner's fault and not the request's: nothing a Start says reaches these
    commands unchecked. The egress type is one of a few names; the allowlist is a profile's
    or a v1 request's CIDR rules (at most 64), each parsed as a network where it came in
    and passed on in its normal form, and IPv6 ones are left out of the rules; the blocked
    destinations are the runner's settings, parsed when loaded; exposed ports are served by
    a relay, not by rules (``ingress.py``). So a failure here says the host is broken (an
    ``iptables`` that cannot reach the kernel's tables, no veth support, a lock held for
    longer than its wait), and every create with egress on this runner fails alike. As a
    ``BackendUnavailable`` it counts against the runner, and the start backoff sends
    Starts to others; as a plain start error it did not, and a runner with a broken
    firewall stayed the least loaded and got every Start of the cluster.
    """


async def run(
    *argv: str, stdin: bytes | None = None, check: bool = True, nice: bool = False
) -> str:
    """Run a host command; ``NetworkError`` with its stderr when it fails and ``check``.

    ``nice``: the command yields the CPU to everything else (work made ahead of need).
    Such a command can start seconds late on a busy host, so it also dies with this process
    (``setpriv --pdeathsig``): if the runner is killed meanwhile, the next one reaps the
    network it was making, and a command that ran after that reap would leave its parts
    behind for good. Commands on a create's path run at once and need no such guard.
    """
    proc = await _start(argv, nice=nice, with_input=stdin is not None)
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:
        await _end(proc)
        raise
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def network_namespace(path: str = "/proc/thread-self/ns/net") -> tuple[int, int] | None:
    """The network namespace (device, inode) of ``path``, by default the calling thread's.

    None where it cannot be read (a process that ended, say).
    """
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


_HOME_NAMESPACE = network_namespace()
"""The network namespace the runner was started in: the host's, where its rules belong."""


def _check_namespace(argv: tuple[str, ...]) -> None:
    """Refuse to run a command from another network namespace than the runner's own.

    Why: a command inherits the namespace of the thread that starts it, and a thread that
    entered a sandbox's namespace (to make a socket there, ``ingress.py``) and failed to
    come back would have every rule added in the wrong place, where it filters nothing, and
    every removal "succeed" there while the host keeps the rules. One ``stat`` per command.
    """
    now = network_namespace()
    if _HOME_NAMESPACE is not None and now is not None and now != _HOME_NAMESPACE:
        raise NetworkError(
            f"{' '.join(argv)}: this thread is not in the runner's network namespace: no "
            "host network command is run from here"
        )


async def _start(
    argv: tuple[str, ...], *, nice: bool, with_input: bool
) -> asyncio.subprocess.Process:
    """Start a host command with its output piped; ``nice`` as for :func:`run`.

    The priority is set on the started child rather than by running it under ``nice``: one
    program execution fewer, and a ``preexec_fn`` would make Python fork instead of
    ``vfork``. A niced command can start seconds late, so it dies with this process.
    """
    _check_namespace(argv)
    guard = (_SETPRIV, "--pdeathsig", "KILL") if nice and _SETPRIV is not None else ()
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *guard,
        _located(argv[0]),
        *argv[1:],
        stdin=pipe if with_input else asyncio.subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
    )
    _STARTED.append(proc.pid)
    if nice:
        with contextlib.suppress(OSError):  # it may have exited already
            os.setpriority(os.PRIO_PROCESS, proc.pid, LOWEST_PRIORITY)
    return proc


_STARTED: deque[int] = deque(maxlen=256)


def started_here(pid: int) -> bool:
    """Whether ``pid`` is one of the last host commands this process started.

    The rule watch (``rule_watch.py``) tells its own firewall changes from the host's by the
    process the kernel names for each; 256 is far more than run at once.
    """
    return pid in _STARTED


def _located(program: str) -> str:
    """``program``'s absolute path in this ``PATH``, looked up once (as given if not found).

    Why: given a bare name, the child (or ``setpriv``) tries ``execve`` in every ``PATH``
    directory before the one holding it, on every run: seven failed calls per firewall
    transaction on a host whose ``PATH`` starts with user directories. A program missing
    now is looked up again next time, and fails as it would have; a changed ``PATH`` is
    looked up anew.
    """
    key = (program, os.environ.get("PATH", ""))
    found = _LOCATED.get(key)
    if found is None:
        found = shutil.which(program)
        if found is None:
            return program
        _LOCATED[key] = found
    return found


_LOCATED: dict[tuple[str, str], str] = {}


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill a command whose caller was cancelled, and wait until it has exited.

    Why: the caller's rollback (``teardown``) comes next. A command left running would make
    its namespace, veth or rules *after* the rollback looked for them, with the subnet
    already released: a leftover veth holding an address that the next sandbox gets too,
    which then reaches nothing. A niced command on a busy host can start seconds late.
    Killed, it has made part of its work at most, which teardown removes. Waiting cannot be
    cancelled again: the rollback must not start before the command is gone.

    Its input ends first: whatever read it on the command's behalf (a wrapper's pipeline
    the kill does not reach) then ends too, and with it every holder of the output pipes,
    which ``wait()`` waits for. Without it such a rollback hung for good.
    """
    if proc.stdin is not None:
        proc.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    exited = asyncio.ensure_future(proc.wait())
    while not exited.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(exited)
