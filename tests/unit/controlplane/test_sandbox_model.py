"""The state model: every (desired, observed) pair converges, and reports commute.

These are pure functions, so the tests drive them exhaustively: a simulated runner answers
each action the way a real one does, for every starting pair, and any order (or repetition)
of the same reports leads to the same record.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import timedelta

import pytest

from sandboxd.controlplane.sandbox_model import (
    Action,
    Desired,
    Observed,
    Report,
    SandboxRecord,
    decide,
    give_up,
    now,
    observe,
    public_reason,
    public_status,
    start_deadline,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as S


def record(**fields: object) -> SandboxRecord:
    created = now()
    base = SandboxRecord(
        sandbox_id="sb-1",
        runner_id="r1",
        spec=b"spec",
        created_at=created,
        start_deadline=start_deadline(created),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def runner_answers(current: SandboxRecord, action: Action) -> SandboxRecord | None:
    """What a healthy runner's answer does to the record (None: the record is removed)."""
    if action is Action.START:
        changed = observe(current, Report(Observed.RUNNING, current.generation))
    elif action is Action.STOP:
        changed = observe(current, Report(Observed.COMPLETED, current.generation, exit_code=143))
    elif action is Action.DELETE:
        return None
    elif action is Action.GIVE_UP:
        changed = give_up(current, "did not start in time")
    elif action is Action.PAUSE:
        changed = observe(current, Report(Observed.PAUSED, current.generation))
    elif action is Action.RESUME:
        changed = observe(current, Report(Observed.RUNNING, current.generation))
    else:
        raise AssertionError(action)
    return changed or current


@pytest.mark.parametrize("desired", list(Desired))
@pytest.mark.parametrize("observed", list(Observed))
@pytest.mark.parametrize("late", [False, True], ids=["in-time", "past-deadline"])
def test_every_pair_converges(desired: Desired, observed: Observed, late: bool) -> None:
    current: SandboxRecord | None = record(desired=desired, observed=observed)
    assert current is not None
    if late:
        current = replace(current, start_deadline=current.created_at - timedelta(seconds=1))
    for _ in range(5):  # every pair settles within a few steps
        assert current is not None
        action = decide(current, now())
        if action is Action.NOTHING:
            break
        current = runner_answers(current, action)
        if current is None:
            break
    else:
        raise AssertionError(f"{desired}/{observed} did not converge")
    if desired is Desired.DELETED:
        assert current is None
        return
    assert current is not None
    if observed in (Observed.COMPLETED, Observed.FAILED, Observed.GONE):
        assert current.observed is observed  # an end is final
    elif desired is Desired.STOPPED or (late and observed is Observed.NONE):
        assert current.observed is Observed.COMPLETED and current.terminal
    elif desired is Desired.PAUSED:
        assert current.observed is Observed.PAUSED
        assert public_status(current) == S.SANDBOX_STATUS_PAUSED
    else:
        assert current.observed is Observed.RUNNING
        assert public_status(current) == S.SANDBOX_STATUS_RUNNING


def test_an_adopted_orphan_is_never_started_here() -> None:
    """Only its runner knows how to start an adopted orphan (no spec): wait for its report."""
    adopted = record(spec=None, start_deadline=None)
    assert decide(adopted, now()) is Action.NOTHING
    assert decide(replace(adopted, desired=Desired.STOPPED), now()) is Action.STOP
    assert decide(replace(adopted, desired=Desired.DELETED), now()) is Action.DELETE


def test_a_start_past_its_deadline_fails_and_is_stopped() -> None:
    late = record(start_deadline=now() - timedelta(seconds=1))
    assert decide(late, now()) is Action.GIVE_UP
    given_up = give_up(late, "did not start within 120 s")
    assert (given_up.desired, given_up.generation) == (Desired.STOPPED, 2)
    assert public_status(given_up) == S.SANDBOX_STATUS_FAILED
    assert public_reason(given_up) == "did not start within 120 s"
    assert decide(given_up, now()) is Action.STOP  # if it shows up after all, it is stopped
    running_late = observe(given_up, Report(Observed.RUNNING, 1))
    assert running_late is not None
    assert public_status(running_late) == S.SANDBOX_STATUS_FAILED  # the verdict stands
    assert decide(running_late, now()) is Action.STOP


REPORTS = [
    Report(Observed.RUNNING, 1),
    Report(Observed.RUNNING, 1),  # a repeat
    Report(Observed.COMPLETED, 2, exit_code=143, reason="stopped"),
    Report(Observed.RUNNING, 2),  # stale: the end already came
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(REPORTS)))))
def test_reports_in_any_order_give_the_same_record(order: tuple[int, ...]) -> None:
    current = record(desired=Desired.STOPPED, generation=2)
    for index in order:
        current = observe(current, REPORTS[index]) or current
    assert (current.observed, current.observed_generation, current.exit_code) == (
        Observed.COMPLETED,
        2,
        143,
    )
    assert public_status(current) == S.SANDBOX_STATUS_COMPLETED
    assert public_reason(current) == "stopped"


def test_repeated_reports_change_nothing() -> None:
    running = observe(record(), Report(Observed.RUNNING, 1))
    assert running is not None
    assert observe(running, Report(Observed.RUNNING, 1)) is None
    ended = observe(running, Report(Observed.FAILED, 1, reason="oom"))
    assert ended is not None
    assert observe(ended, Report(Observed.FAILED, 1, reason="again")) is None
    assert observe(ended, Report(Observed.RUNNING, 5)) is None


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({}, S.SANDBOX_STATUS_CREATING, ""),
        ({"observed": Observed.RUNNING}, S.SANDBOX_STATUS_RUNNING, ""),
        (
            {"observed": Observed.RUNNING, "desired": Desired.STOPPED},
            S.SANDBOX_STATUS_TERMINATING,
            "",
        ),
        ({"observed": Observed.COMPLETED, "exit_code": 0}, S.SANDBOX_STATUS_COMPLETED, "exited"),
        (
            {"observed": Observed.COMPLETED, "desired": Desired.STOPPED},
            S.SANDBOX_STATUS_COMPLETED,
            "stopped",
        ),
        ({"observed": Observed.FAILED, "reason": "no image"}, S.SANDBOX_STATUS_FAILED, "no image"),
        ({"observed": Observed.GONE}, S.SANDBOX_STATUS_FAILED, "lost: its runner no longer has it"),
        (
            {"observed": Observed.GONE, "desired": Desired.STOPPED},
            S.SANDBOX_STATUS_TERMINATED,
            "stopped before its runner started it",
        ),
        ({"verdict": "revoked"}, S.SANDBOX_STATUS_FAILED, "revoked"),
    ],
)  # fmt: skip
def test_public_status(fields: dict[str, object], status: int, reason: str) -> None:
    current = record(**fields)
    assert (public_status(current), public_reason(current)) == (status, reason)


def test_ended_sandboxes_release_their_capacity() -> None:
    assert record().live and record(observed=Observed.RUNNING).live
    for ended in (Observed.COMPLETED, Observed.FAILED, Observed.GONE):
        assert not record(observed=ended).live


PAUSE_REPORTS = [
    Report(Observed.RUNNING, 1),  # started
    Report(Observed.PAUSED, 2),  # paused
    Report(Observed.PAUSED, 2),  # a repeat
    Report(Observed.RUNNING, 3),  # resumed
    Report(Observed.RUNNING, 1),  # stale
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(PAUSE_REPORTS)))))
def test_pause_and_resume_reports_in_any_order_give_the_same_record(
    order: tuple[int, ...],
) -> None:
    current = record(generation=3)
    for index in order:
        current = observe(current, PAUSE_REPORTS[index]) or current
    assert (current.observed, current.observed_generation) == (Observed.RUNNING, 3)
    assert public_status(current) == S.SANDBOX_STATUS_RUNNING
    assert current.started_at is not None


def test_paused_reads_paused_and_refuses_work_while_it_changes() -> None:
    running = record(observed=Observed.RUNNING, observed_generation=1)
    assert not running.paused and decide(running, now()) is Action.NOTHING
    pausing = replace(running, desired=Desired.PAUSED, generation=2)
    assert public_status(pausing) == S.SANDBOX_STATUS_RUNNING  # until its runner says so
    assert pausing.paused and decide(pausing, now()) is Action.PAUSE
    paused = observe(pausing, Report(Observed.PAUSED, 2))
    assert paused is not None and public_status(paused) == S.SANDBOX_STATUS_PAUSED
    assert paused.paused and paused.live and not paused.stop_requested
    resuming = replace(paused, desired=Desired.RUNNING, generation=3)
    assert resuming.paused and decide(resuming, now()) is Action.RESUME
    assert public_status(resuming) == S.SANDBOX_STATUS_PAUSED
    stopping = replace(paused, desired=Desired.STOPPED, generation=3)
    assert public_status(stopping) == S.SANDBOX_STATUS_TERMINATING
    assert decide(stopping, now()) is Action.STOP
    ended = observe(stopping, Report(Observed.COMPLETED, 3, exit_code=0))
    assert ended is not None and ended.terminal and not ended.paused


def test_a_runner_that_finds_a_different_truth_is_believed() -> None:
    """Same generation, other phase: a restarted runner read the freezer (or lost it)."""
    paused = record(observed=Observed.PAUSED, observed_generation=2, desired=Desired.PAUSED)
    thawed = observe(paused, Report(Observed.RUNNING, 2))
    assert thawed is not None and thawed.observed is Observed.RUNNING
    assert decide(thawed, now()) is Action.PAUSE  # and the wish is made true again


def test_a_pause_reported_for_an_older_generation_is_confirmed() -> None:
    """A runner killed mid-pause reports the freezer's PAUSED with the generation before."""
    asked = record(desired=Desired.PAUSED, generation=3)
    found = replace(asked, observed=Observed.PAUSED, observed_generation=2)
    assert decide(found, now()) is Action.PAUSE
    confirmed = observe(found, Report(Observed.PAUSED, 3))
    assert confirmed is not None and decide(confirmed, now()) is Action.NOTHING


def test_a_refused_pause_is_given_up_with_its_reason() -> None:
    from sandboxd.controlplane.sandbox_model import pause_refused

    pausing = record(observed=Observed.RUNNING, desired=Desired.PAUSED, generation=2)
    refused = pause_refused(pausing, 2, "no freezer")
    assert refused is not None
    assert (refused.desired, refused.generation) == (Desired.RUNNING, 3)
    assert public_reason(refused) == "pause refused by its runner: no freezer"
    assert decide(refused, now()) is Action.NOTHING
    assert pause_refused(replace(pausing, generation=3), 2, "late") is None  # moved on
