"""Where an exec's CPU goes: each process and thread, per exec of ``true``, builds side by side.

Why: this VM's speed drifts by a third within minutes, and a change of a few percent on the
exec path hides in the latency even in paired runs (``bench/paired.py``, 400 pairs: 0.970
in one run and 0.996 in the next for the same change). CPU time per exec, read per thread
from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds) around thousands of execs, moves by
a few microseconds from run to run, so it shows such a change, and where it landed:

* ``up`` loop: the event-loop thread of ``sandboxd up`` (control plane and its runner);
* ``up`` other: its other threads (gRPC's poller and workers, the database thread, ...);
* client loop / client other: this process's ``cwsandbox`` loop thread, and the rest;
* agent: the sandbox's PID 1, which starts each command;
* commands: the ``true`` processes themselves, from the agent's reaped children's time
  (clock ticks, so read over many execs).

Run (as root)::

    .venv/bin/python bench/exec_cpu.py [--execs 2000] [--rounds 3] [--baseline CHECKOUT]

Each build runs in a process of its own with its ``src/`` first on ``PYTHONPATH`` (its
client and its ``sandboxd up``); with ``--baseline`` (e.g. ``git worktree add /tmp/base
<rev>``) the rounds alternate between the two builds, and the medians are printed side by
side with the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GROUPS = ("p50 latency", "up loop", "up other", "client loop", "client other", "agent", "commands")
TICKS = os.sysconf("SC_CLK_TCK")


def thread_ns(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread of ``pid``: its name and the CPU time it has run, in nanoseconds."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                threads[int(tid)] = (name, int(stat.read().split()[0]))
        except OSError:  # the thread ended meanwhile
            continue
    return threads


def reaped_children_seconds(pid: int) -> float:
    """CPU time of ``pid``'s children it has waited for (``cutime`` + ``cstime``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def descendant_named(root: int, name: str) -> int:
    """The one descendant of ``root`` named ``name`` (the agent of the only sandbox)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                head, rest = stat.read().rsplit(")", 1)
        except OSError:
            continue
        parents[int(entry)] = int(rest.split()[1])
        names[int(entry)] = head.split("(", 1)[1]
    found = []
    for pid, comm in names.items():
        ancestor = parents.get(pid, 0)
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if comm == name and ancestor == root:
            found.append(pid)
    if len(found) != 1:  # none, or a warm pool's sandboxes beside ours: which is ours?
        raise RuntimeError(f"{len(found)} processes named {name} under {root}, not one")
    return found[0]


def split(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], loop_tid: int
) -> tuple[int, int]:
    """(thread ``loop_tid``'s, every other thread's) nanoseconds between two readings."""
    loop = other = 0
    for tid, (name, ns) in after.items():
        spent = ns - before.get(tid, (name, 0))[1]
        if tid == loop_tid:
            loop += spent
        else:
            other += spent
    return loop, other


def client_loop_tid() -> int:
    """The kernel's id of the client's event-loop thread (Python 3.11 does not name it)."""
    import asyncio
    import threading

    from cwsandbox import _loop

    async def native_id() -> int:
        return threading.get_native_id()

    return asyncio.run_coroutine_threadsafe(native_id(), _loop.loop()).result(10)


def worker(execs: int) -> None:
    """Start ``sandboxd up`` and a sandbox; answer one round per line read from stdin."""
    import cwsandbox  # noqa: F401  # first, as a program using the client does

    sys.path.insert(1, str(ROOT.parent))
    from tests.support.processes import all_in_one

    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-exec-cpu-") as data,
        all_in_one(Path(data)) as up,
    ):
        os.environ["CWSANDBOX_BASE_URL"] = up.base_url
        os.environ["CWSANDBOX_API_KEY"] = up.api_key
        from cwsandbox import Sandbox

        sandbox = Sandbox.run(container_image="python:3.11")
        for _ in range(100):
            sandbox.exec(["true"]).result()
        up_pid, me = up.proc.popen.pid, os.getpid()
        agent = descendant_named(up_pid, "sandboxd-init")
        client_loop = client_loop_tid()
        print("ready", flush=True)
        for _ in sys.stdin:
            up0, me0, agent0 = thread_ns(up_pid), thread_ns(me), thread_ns(agent)
            commands0 = reaped_children_seconds(agent)
            took = []
            for _ in range(execs):
                began = time.perf_counter()
                sandbox.exec(["true"]).result()
                took.append(time.perf_counter() - began)
            up1, me1, agent1 = thread_ns(up_pid), thread_ns(me), thread_ns(agent)
            commands = reaped_children_seconds(agent) - commands0
            up_loop, up_other = split(up0, up1, up_pid)
            client_ns, client_other = split(me0, me1, client_loop)
            agent_ns = sum(split(agent0, agent1, agent))
            per_exec = [
                statistics.median(took) * 1e6,
                *(ns / 1000 / execs for ns in (up_loop, up_other, client_ns, client_other)),
                agent_ns / 1000 / execs,
                commands * 1e6 / execs,
            ]
            print(json.dumps(dict(zip(GROUPS, per_exec, strict=True))), flush=True)
        sandbox.stop(graceful_shutdown_seconds=0).result()


class Build:
    """One build's worker process."""

    def __init__(self, checkout: Path, execs: int) -> None:
        env = dict(os.environ, PYTHONPATH=f"{checkout / 'src'}:{ROOT.parent}")
        env.pop("CWSANDBOX_BASE_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--execs", str(execs)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            sys.exit(f"{checkout}: its sandboxd up or sandbox did not start")

    def round(self) -> dict[str, float]:
        """One round: microseconds per exec for each group."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(120)


def main() -> None:
    """Parse arguments; run the worker, or the builds' rounds and the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=2000, help="execs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="checkout to compare this one against")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.execs)
        return
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (real namespaces and cgroups)")
    checkouts = [ROOT.parent] if args.baseline is None else [args.baseline, ROOT.parent]
    builds = [Build(checkout, args.execs) for checkout in checkouts]
    rounds: list[list[dict[str, float]]] = [[] for _ in builds]
    try:
        for number in range(args.rounds):
            order = range(len(builds)) if number % 2 == 0 else reversed(range(len(builds)))
            for index in order:
                rounds[index].append(builds[index].round())
    finally:
        for build in builds:
            build.close()
    medians = [{g: statistics.median(r[g] for r in runs) for g in GROUPS} for runs in rounds]
    names = [str(c) for c in checkouts]
    print(f"\nCPU per exec of `true`, µs (median of {args.rounds} rounds of {args.execs} execs; "
          "the latency row is the p50 of a round)")  # fmt: skip
    if len(medians) == 1:
        for group in GROUPS:
            print(f"{group:14} {medians[0][group]:9.1f}")
        return
    print(f"{'':14} {'baseline':>9} {'this':>9} {'this-base':>10}   baseline: {names[0]}")
    for group in GROUPS:
        base, this = medians[0][group], medians[1][group]
        print(f"{group:14} {base:9.1f} {this:9.1f} {this - base:+10.1f}")


if __name__ == "__main__":
    main()
