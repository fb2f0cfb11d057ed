"""Starting processes inside the sandbox (used by the agent) and exit-code conventions.

Why separate: these few functions are the exec hot path and the terminal plumbing, shared
by the agent (which spawns) and the runner side (which resizes PTYs). Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def exit_code_from_status(status: int) -> int:
    """Shell convention: the exit status, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def set_winsize(fd: int, cols: int, rows: int) -> None:
    """TIOCSWINSZ on a terminal fd."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn_fast(path: str, argv: list[str], stdio: tuple[int, int, int], env: dict[str, str]) -> int:
    """``posix_spawn`` (a vfork+exec in C) of ``path`` in a process group of its own; the pid.

    Why not ``subprocess``: in a freshly forked agent every Python object touched costs a
    copy-on-write page fault, and ``Popen`` touches many; this path is the exec hot path.
    Every descriptor of the agent is close-on-exec, so only ``stdio`` is inherited. ``path``
    was resolved in root by the caller, which also moved into the working directory (the
    child inherits it). Exec errors (ENOENT, EACCES) are raised here.

    Why a process group (``setpgid``) and not a session (``setsid``): a group is what keeps
    one exec's ``kill 0`` from reaching another exec or the main process, and what the agent
    signals (``killpg``); none of these processes has a terminal, so a session adds nothing.
    And ``setsid`` moves the child into a new scheduler autogroup, after which, in a
    sandbox's CPU cgroup, the agent was not run again until the child left the CPU: every
    spawn returned only once the program had run its start-up or ended (``true``: 0.54 ms
    against 0.10 ms, measured in a sandbox), so the agent answered that much later.
    """
    return os.posix_spawn(
        path,
        argv,
        env,
        file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)],
        setpgroup=0,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
    )


def acquire_ctty() -> None:
    """Make the PTY on stdin the controlling terminal (run in the child, after setsid)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


OOM_SCORE_EXPOSED = 500


def expose_to_oom(pid: int | str = "self") -> None:
    """Make a sandbox process the OOM killer's choice before its agent.

    The agent keeps the score it was born with (0) and everything it starts gets +500,
    which the kernel allows without privilege since it only raises the score. Within a
    sandbox's memory cgroup that puts every user process ahead of PID 1 by half the limit,
    so a hog or a fork bomb loses its own processes and the sandbox keeps answering. Why not
    -1000 for the agent: that needs ``CAP_SYS_RESOURCE`` (some VMs withhold it even from
    root), and where it works, children inherit -1000 as the floor they may lower
    themselves to, so a sandbox could make its own processes unkillable.

    Written just after the spawn, so for its first instructions a process has the agent's
    score. Why not the agent raising its own score around the spawn, so children are born
    exposed: for the spawn's duration (up to a millisecond, longer under memory pressure)
    the agent would be as good a choice as a fork bomb's processes (the fork-bomb test
    failed with that variant, run beside others).
    """
    with contextlib.suppress(OSError):  # no text-file layer: this runs on every exec's path
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % OOM_SCORE_EXPOSED)
        finally:
            os.close(fd)
