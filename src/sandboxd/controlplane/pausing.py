"""Pause and Resume: a sandbox's processes frozen where they are, and thawed again.

Level-triggered like everything else (DESIGN.md rule 11): Pause and Resume only write the
desired state (``Desired.PAUSED`` or ``Desired.RUNNING``, a new generation each), in one
database write; the sandbox's reconciler sends ``PauseSandbox``/``ResumeSandbox`` until its
runner reports ``PAUSED``/``RUNNING`` for that generation, now or after a runner or
control-plane restart. The call then waits for that report (as Stop waits for the end)
and answers ``success``; if it does not come in time, UNAVAILABLE says the wish is
recorded. The runner freezes the sandbox's cgroup (``backends/local/freezer.py``), which
stays frozen across a runner restart; a restarted runner reads the freezer and reports
what it finds.

What a client sees:

* ``Get``/``List`` show ``SANDBOX_STATUS_PAUSED`` once its runner reported it paused
  (RUNNING while a pause is on its way, PAUSED while a resume is).
* Pausing a paused sandbox, or resuming a running one, succeeds and changes nothing.
  Pausing or resuming one that is not running (creating, stopping, ended) answers
  FAILED_PRECONDITION naming its status.
* Exec, files and logs on a paused sandbox (or one being paused or resumed) answer
  FAILED_PRECONDITION ``CWSANDBOX_SANDBOX_PAUSED`` at once; StreamExec and StreamLogs say
  it in-band (code ``SANDBOX_PAUSED``), as they report every condition found after the
  stream is accepted. Nothing waits for a resume. An exec already running when the sandbox
  is paused is frozen with it and continues after the resume.
* Stop and Delete of a paused sandbox work: the runner thaws it first, so its main process
  gets SIGTERM and the grace period as usual.
* **The lifetime keeps counting while paused.** A paused sandbox still holds its memory,
  its disk and its reservation on the runner, so ``max_lifetime_seconds`` is wall-clock
  time since the start; when it runs out during a pause, the sandbox is thawed and stopped
  like a running one.
* A runner that cannot pause (an older runner, a backend without pause, a sandbox created
  before pausing existed) refuses; the wish is then given up (desired running again, with
  the reason in ``status_reason``) and Pause answers FAILED_PRECONDITION with it.
"""

from __future__ import annotations

from dataclasses import replace

import grpc

from sandboxd.controlplane.lifecycle import Lifecycle, sandbox_not_found
from sandboxd.controlplane.runner_link import runner_unavailable
from sandboxd.controlplane.sandbox_model import STARTED, Desired, Observed, SandboxRecord
from sandboxd.errors import ApiError, invalid_argument
from sandboxd_protocol.v1beta2 import gateway_pb2

S = gateway_pb2
DEFAULT_WAIT_SECONDS = 30.0
"""How long Pause and Resume wait for the runner's report without ``max_timeout_seconds``."""
MAX_WAIT_SECONDS = 600


def _status_name(record: SandboxRecord) -> str:
    return S.SandboxStatus.Name(record.status).removeprefix("SANDBOX_STATUS_").lower()


def cannot(record: SandboxRecord, verb: str) -> ApiError:
    """Pause or resume of a sandbox that is not running (or paused): its status named."""
    status = _status_name(record)
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"sandbox {record.sandbox_id!r} is {status}: only a running or paused sandbox can "
        f"be {verb}",
        reason="CWSANDBOX_SANDBOX_NOT_RUNNING",
        metadata={"sandbox_id": record.sandbox_id, "status": status},
    )


def want_paused(record: SandboxRecord) -> SandboxRecord | None:
    """Desired state: paused (a new generation); None when nothing is to change."""
    if record.desired is not Desired.RUNNING or record.observed not in STARTED:
        return None
    return replace(record, desired=Desired.PAUSED, generation=record.generation + 1, reason="")


def want_resumed(record: SandboxRecord) -> SandboxRecord | None:
    """Desired state: running again (a new generation); None when nothing is to change."""
    if record.desired is not Desired.PAUSED or record.observed not in STARTED:
        return None
    return replace(record, desired=Desired.RUNNING, generation=record.generation + 1)


def wait_seconds(max_timeout_seconds: int) -> float:
    """The request's ``max_timeout_seconds`` (0: the default), checked."""
    if max_timeout_seconds < 0:
        raise invalid_argument("max_timeout_seconds", "must not be negative")
    if max_timeout_seconds > MAX_WAIT_SECONDS:
        raise invalid_argument("max_timeout_seconds", f"must be at most {MAX_WAIT_SECONDS}")
    return float(max_timeout_seconds) or DEFAULT_WAIT_SECONDS


class Pausing:
    """Pause and Resume over the records the reconcilers act on."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._records = lifecycle.records

    async def pause(self, record: SandboxRecord, wait: float) -> None:
        """Want it paused; return once its runner froze it (at once if it already was)."""
        await self._change(record, Desired.PAUSED, wait)

    async def resume(self, record: SandboxRecord, wait: float) -> None:
        """Want it running; return once its runner thawed it (at once if it was running)."""
        await self._change(record, Desired.RUNNING, wait)

    async def _change(self, record: SandboxRecord, target: Desired, wait: float) -> None:
        verb = "paused" if target is Desired.PAUSED else "resumed"
        arrived = Observed.PAUSED if target is Desired.PAUSED else Observed.RUNNING
        if record.status not in (S.SANDBOX_STATUS_RUNNING, S.SANDBOX_STATUS_PAUSED):
            raise cannot(record, verb)
        if record.desired is target and record.observed is arrived:
            return  # already so: idempotent
        change = want_paused if target is Desired.PAUSED else want_resumed
        current = await self._records.update(record.sandbox_id, change)
        if current is None:
            raise sandbox_not_found(record.sandbox_id)
        generation = current.generation

        def settled(r: SandboxRecord | None) -> bool:
            return (
                r is None
                or r.terminal
                or r.desired is not target
                or (r.observed is arrived and r.observed_generation >= generation)
            )

        done = await self._records.wait_for(record.sandbox_id, settled, wait)
        if done is None:
            raise sandbox_not_found(record.sandbox_id)
        if not settled(done):
            raise runner_unavailable(
                done.runner_id,
                f"the sandbox is not {verb} yet; it will be when its runner answers",
            )
        if done.desired is target and done.observed is arrived and not done.terminal:
            return
        if done.terminal or done.stop_requested:
            raise cannot(done, verb)
        raise ApiError(  # the pause was given up (its runner refused), or undone meanwhile
            grpc.StatusCode.FAILED_PRECONDITION,
            done.reason or f"sandbox {record.sandbox_id!r} was changed before it was {verb}",
            metadata={"sandbox_id": record.sandbox_id, "status": _status_name(done)},
        )
