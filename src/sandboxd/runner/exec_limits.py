"""How many execs may run at once: per sandbox, and on the whole runner.

Why: every exec holds runner file descriptors for as long as it runs (its connection to the
sandbox's agent and three pipe ends, or a PTY master) and an HTTP/2 stream. A client that
opens thousands of execs in one sandbox would otherwise exhaust the runner's descriptors,
after which *other* tenants' execs, file transfers and creates fail with EMFILE. So:

* **Per sandbox** at most ``max_execs_per_sandbox`` (default
  :data:`DEFAULT_MAX_EXECS_PER_SANDBOX`, runner setting ``--max-execs-per-sandbox``). One
  more is refused in-band with code :data:`EXEC_LIMIT_CODE` (reason
  ``CWSANDBOX_EXEC_LIMIT_EXCEEDED``, of the RESOURCE_EXHAUSTED family in admin-model §5),
  before the agent is asked for anything; execs in other sandboxes are not affected.
* **Per runner** at most what the descriptor limit leaves room for
  (:func:`runner_exec_budget`): ``(RLIMIT_NOFILE soft - FD_HEADROOM) // FDS_PER_EXEC``.
  One more is refused with code :data:`RUNNER_LIMIT_CODE` (``CWSANDBOX_RUNNER_OVERLOADED``),
  so the headroom stays free for creates, files and the control stream whatever the clients do.
* :func:`raise_nofile_limit` lifts the runner's soft ``RLIMIT_NOFILE`` to its hard limit at
  start (often 1024 → 524288 under systemd), which is what the runner budget is computed from.

Refusals are in-band ``error`` frames, not gRPC statuses, as v1beta2.md §5.3 asks for exec
conditions found after the stream is accepted: every client turns them into a typed
``SandboxExecutionError`` whose ``reason`` is the code.

Why 128 per sandbox: more concurrent commands than any interactive or agent workload we know
runs in one sandbox (a shell, a language server, a test runner with workers), and 128 × 4
descriptors = 512 per sandbox keeps dozens of flooding sandboxes inside even a modest
20,000-descriptor limit.
"""

from __future__ import annotations

import logging
import resource

__all__ = [
    "DEFAULT_MAX_EXECS_PER_SANDBOX",
    "EXEC_LIMIT_CODE",
    "RUNNER_LIMIT_CODE",
    "ExecSlots",
    "raise_nofile_limit",
    "runner_exec_budget",
]

DEFAULT_MAX_EXECS_PER_SANDBOX = 128
EXEC_LIMIT_CODE = "EXEC_LIMIT_EXCEEDED"
RUNNER_LIMIT_CODE = "RUNNER_OVERLOADED"
# Descriptors one exec may hold on the runner: agent connection, stdin/stdout/stderr pipe
# ends (or a PTY master), with room for transient ones while it starts.
FDS_PER_EXEC = 8
# Descriptors kept for everything else: gRPC channels, creates (pipes, netlink, cgroup and
# state files), file transfers, logs, the zygote connection.
FD_HEADROOM = 1024

_log = logging.getLogger(__name__)


def raise_nofile_limit() -> tuple[int, int]:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; ``(before, after)`` soft values.

    Unprivileged and idempotent. Children (the zygote, and so the sandboxes) inherit the new
    soft limit; they could have raised it to the same hard limit themselves.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft, soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
        _log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    return soft, target


def runner_exec_budget(nofile: int | None = None) -> int:
    """How many execs the whole runner may hold at once, from the soft descriptor limit."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return max(16, (nofile - FD_HEADROOM) // FDS_PER_EXEC)


class ExecSlots:
    """Counts running execs per sandbox and in total; refuses the one over a limit.

    Used from the event loop only (no lock). ``acquire`` returns the refusal ``(code,
    message)`` or ``None`` and then counts the exec until ``release``.
    """

    def __init__(self, per_sandbox: int, total: int) -> None:
        if per_sandbox < 1 or total < 1:
            raise ValueError("exec limits must be at least 1")
        self.per_sandbox = per_sandbox
        self.total = total
        self._running: dict[str, int] = {}
        self._sum = 0

    def running(self, sandbox_id: str | None = None) -> int:
        """Execs counted now, in one sandbox or in total."""
        return self._sum if sandbox_id is None else self._running.get(sandbox_id, 0)

    def acquire(self, sandbox_id: str) -> tuple[str, str] | None:
        """Count one more exec in ``sandbox_id``, or say why not."""
        mine = self._running.get(sandbox_id, 0)
        if mine >= self.per_sandbox:
            return EXEC_LIMIT_CODE, (
                f"sandbox {sandbox_id!r} already runs {mine} execs, the most this runner "
                f"allows at once in one sandbox (max_execs_per_sandbox={self.per_sandbox}); "
                "retry when one has ended"
            )
        if self._sum >= self.total:
            return RUNNER_LIMIT_CODE, (
                f"this runner already runs {self._sum} execs, the most its open-files limit "
                "allows; retry later"
            )
        self._running[sandbox_id] = mine + 1
        self._sum += 1
        return None

    def release(self, sandbox_id: str) -> None:
        """Stop counting one exec of ``sandbox_id``."""
        mine = self._running.get(sandbox_id, 0)
        if mine <= 0:
            return
        self._sum -= 1
        if mine == 1:
            del self._running[sandbox_id]
        else:
            self._running[sandbox_id] = mine - 1
