"""A runner that cannot make sandboxes stops attracting Starts: real control plane and runners.

Two runners with the local backend; the filesystem of ``a-full``'s writable layers is (or
becomes) a 16 MiB tmpfs, too small for any sandbox's layer. Placement prefers the least
loaded runner, and before, such a runner got every Start of the cluster: each start failed
there for want of disk, the failure did not count against the runner, and it gave the
reservation back, so ``a-full`` stayed the least loaded. Now:

* the runner reports the largest layer it can make in its registration and heartbeats
  (``Resources.disk_room_bytes``), and placement skips it for profiles whose layer is larger;
* a start that fails for want of disk anyway (it filled up since the last heartbeat) is
  ``RESOURCE_EXHAUSTED`` / ``CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED``, which the start backoff
  holds against the runner, and the runner reports the room it has left in a heartbeat
  sent just before that failure; the control plane moves that start to the other runner
  (``controlplane/start_moves.py``), so the sandbox runs after all.

The same holds for a runner whose host cannot make sandbox networks (its firewall refuses
every change): its failures count against it and its starts move elsewhere, and after
three the Starts go elsewhere directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwsandbox import Sandbox
from cwsandbox._events import iter_events
from sandboxd.controlplane.start_backoff import FAILURES_BEFORE_BACKOFF
from sandboxd.up import ensure_default_image
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc
from tests.integration.test_placement_backends import refused, start, wait_status
from tests.integration.test_placement_rejections import details
from tests.support.faults import backend_key, sandbox_pids, sandboxd_admin, wait_until
from tests.support.postgres import small_tmpfs
from tests.support.processes import ControlPlaneProcess, RunnerProcess

pytestmark = pytest.mark.e2e
NO_NETWORK = "the host could not make the sandbox's network: "
NO_ROOM = "this runner has no room for the sandbox: the runner's disk is full: "
SKIPPED = (
    "runner a-full, profile default: its disk is full: it has room for a writable layer of at most "
)
Gateway = gateway_pb2_grpc.GatewayServiceStub


@contextlib.contextmanager
def two_runners(
    root: Path,
    names: tuple[str, str] = ("a-full", "b-roomy"),
    *,
    full: str = "",
    heartbeat: float = 0.5,
    first_env: dict[str, str] | None = None,
) -> Iterator[tuple[Gateway, ControlPlaneProcess]]:
    """Two runners with the local backend; the first is the one in trouble: its layers on
    a 16 MiB tmpfs mounted ``full`` = "before" the runners start or "after" both have
    registered, and ``first_env`` in its environment. Yields the gateway and the control
    plane."""
    if os.geteuid() != 0:
        pytest.skip("the runners' local backend needs root")
    cp = ControlPlaneProcess(
        data_dir=root / "cp", heartbeat_interval=heartbeat, health_timeout=max(10, heartbeat * 4)
    ).start()
    runners: list[RunnerProcess] = []
    channel = cp.channel()
    disk = root / "a-data" / "backend" / "disk"
    with contextlib.ExitStack() as mounts:
        try:
            if full == "before":
                mounts.enter_context(small_tmpfs(disk, size="16m"))
            for name, env in zip(names, (first_env or {}, {}), strict=True):
                data = root / f"{name[0]}-data"
                ensure_default_image(data)  # from the machine-wide build cache
                args = ["--backend", "local", "--data-dir", str(data)]
                runner = RunnerProcess(cp, root / name, name, extra_args=args, extra_env=env)
                runners.append(runner.start())
            with cp.discovery() as client:
                for name in names:
                    client.wait_for(name, healthy=True, timeout=60)
            if full == "after":
                mounts.enter_context(small_tmpfs(disk, size="16m"))
            yield gateway_pb2_grpc.GatewayServiceStub(channel), cp  # type: ignore[no-untyped-call]
        finally:
            channel.close()
            for runner in runners:
                runner.stop()
            cp.stop()


def starts_until_one_runs(
    gateway: Gateway, running: list[str], on: str, tries: int
) -> list[g.GetSandboxResponse]:
    """Start sandboxes until one runs (on runner ``on``; added to ``running``), at most
    ``tries``; the ones that failed before it."""
    failed: list[g.GetSandboxResponse] = []
    for _ in range(tries):
        got = wait_status(
            gateway, start(gateway), g.SANDBOX_STATUS_RUNNING, g.SANDBOX_STATUS_FAILED
        )
        if got.sandbox_status == g.SANDBOX_STATUS_RUNNING:
            running.append(got.sandbox_id)
            assert got.runner_id == on
            return failed
        failed.append(got)
    raise AssertionError(f"every Start failed: {[f.status_reason for f in failed]}")


def stop_all(gateway: Gateway, sandbox_ids: list[str]) -> None:
    for sandbox_id in sandbox_ids:
        stop = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=0)
        gateway.Stop(stop, timeout=60)


def test_a_runner_whose_disk_is_full_gets_no_starts(tmp_path: Path) -> None:
    with two_runners(tmp_path, full="before") as (gateway, _):
        running: list[str] = []
        try:
            for _ in range(3):  # a-full is the least loaded all along
                running.append(start(gateway))
                got = wait_status(gateway, running[-1], g.SANDBOX_STATUS_RUNNING)
                assert got.runner_id == "b-roomy"
            _, violations = details(refused(gateway, runner_ids=["a-full"]))
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(SKIPPED), description
            assert description.endswith(", the profile's is 10Gi"), description
        finally:
            stop_all(gateway, running)


def moved_between(
    cp: ControlPlaneProcess, sandbox_id: str, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, object]]:
    """The ``moved`` events of ``sandbox_id``'s trail (read as the admin)."""
    monkeypatch.setenv("CWSANDBOX_BASE_URL", cp.url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", cp.admin_key)
    return [e.data for e in iter_events(sandbox_id) if e.kind == "moved"]


def test_a_runner_whose_disk_fills_up_hands_its_start_to_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after the runner said it had room (heartbeats 20 s apart): the
    start placed there fails for want of room, counts against the runner, and the control
    plane moves it to ``b-roomy``, where it runs under the same id; the client never sees
    a failure. The runner sends a heartbeat with the room it has left before the failure,
    so the next Start goes to ``b-roomy`` at once. Before, that sandbox ended FAILED; and
    before that, every Start failed on ``a-full``."""
    with two_runners(tmp_path, full="after", heartbeat=20) as (gateway, cp):
        running = [start(gateway, runner_ids=["b-roomy"])]  # b-roomy is now the more loaded
        try:
            assert wait_status(gateway, running[0], g.SANDBOX_STATUS_RUNNING).runner_id
            running.append(start(gateway))  # placed on a-full, the least loaded
            got = wait_status(
                gateway, running[-1], g.SANDBOX_STATUS_RUNNING, g.SANDBOX_STATUS_FAILED
            )
            assert (got.sandbox_status, got.runner_id) == (g.SANDBOX_STATUS_RUNNING, "b-roomy")
            moved = moved_between(cp, running[-1], monkeypatch)
            assert moved == [{"runner_id": "b-roomy", "from_runner_id": "a-full"}]
            _, violations = details(refused(gateway, runner_ids=["a-full"]))
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(SKIPPED), description  # the room, not a backoff
            assert starts_until_one_runs(gateway, running, "b-roomy", tries=1) == []
        finally:
            stop_all(gateway, running)


def test_our_client_never_sees_the_moved_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Sandbox.run()`` and an exec, as the guide writes them, while the runner the start
    is placed on has no room: the client's first exec was sent to that runner to wait for
    the start (``exec-waits-running``), which refuses it once the start failed there; the
    client then asks Get, sees the sandbox still starting (moved), and sends the exec again
    once it runs on ``b-roomy``."""
    with two_runners(tmp_path, full="after", heartbeat=20) as (gateway, cp):
        keep = [start(gateway, runner_ids=["b-roomy"])]  # so a-full is the least loaded
        try:
            assert wait_status(gateway, keep[0], g.SANDBOX_STATUS_RUNNING).runner_id
            monkeypatch.setenv("CWSANDBOX_BASE_URL", cp.url)
            monkeypatch.setenv("CWSANDBOX_API_KEY", cp.admin_key)
            with Sandbox.run() as sandbox:
                result = sandbox.exec(["echo", "ran after all"]).result()
                assert (result.returncode, result.stdout) == (0, "ran after all\n")
                got = gateway.Get(g.GetSandboxRequest(sandbox_id=sandbox.sandbox_id), timeout=30)
                assert got.runner_id == "b-roomy"
                moved = moved_between(cp, sandbox.sandbox_id, monkeypatch)
                assert moved == [{"runner_id": "b-roomy", "from_runner_id": "a-full"}]
        finally:
            stop_all(gateway, keep)


BROKEN_FIREWALL = """#!/bin/sh
# sandboxd's test: a stand-in for a host whose firewall is broken; every change is refused.
echo "iptables-restore: line 2 failed: the kernel's tables cannot be reached" >&2
exit 1
"""


def firewall_env(tools: Path, script: str) -> dict[str, str]:
    """A runner's environment whose ``iptables-restore`` is ``script`` (put in ``tools``)."""
    tools.mkdir()
    (tools / "iptables-restore").write_text(script)
    (tools / "iptables-restore").chmod(0o755)
    return {"PATH": f"{tools}:{os.environ['PATH']}"}


def test_a_runner_whose_firewall_is_broken_is_backed_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``a-broken`` cannot make any sandbox network: its ``iptables-restore`` fails (a
    script that stands in for a broken host firewall, first on its ``PATH``; everything
    else is real). Each start there fails naming the network and counts against the runner
    (``HostNetworkFailed`` is the backend being unavailable); a start pinned there ends
    FAILED, the others move to ``b-fine`` and run. After three failures the backoff sends
    Starts to ``b-fine`` directly. Before, the failure was a plain start error: not counted,
    so ``a-broken`` stayed the least loaded and every Start of the cluster failed on it."""
    env = firewall_env(tmp_path / "broken-firewall", BROKEN_FIREWALL)
    with two_runners(tmp_path, ("a-broken", "b-fine"), first_env=env) as (gateway, cp):
        running = [start(gateway, runner_ids=["b-fine"])]  # b-fine is now the more loaded
        try:
            assert wait_status(gateway, running[0], g.SANDBOX_STATUS_RUNNING).runner_id
            pinned = start(gateway, runner_ids=["a-broken"])  # no other runner may take it
            got = wait_status(gateway, pinned, g.SANDBOX_STATUS_FAILED)
            assert got.runner_id == "a-broken"
            assert NO_NETWORK in got.status_reason, got.status_reason
            assert "the kernel's tables cannot be reached" in got.status_reason
            for _ in range(FAILURES_BEFORE_BACKOFF - 1):  # each tried on a-broken first
                running.append(start(gateway))
                got = wait_status(
                    gateway, running[-1], g.SANDBOX_STATUS_RUNNING, g.SANDBOX_STATUS_FAILED
                )
                assert (got.sandbox_status, got.runner_id) == (
                    g.SANDBOX_STATUS_RUNNING,
                    "b-fine",
                ), got.status_reason
                assert moved_between(cp, running[-1], monkeypatch) == [
                    {"runner_id": "b-fine", "from_runner_id": "a-broken"}
                ]
            _, violations = details(refused(gateway, runner_ids=["a-broken"]))
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(
                f"runner a-broken: backed off after {FAILURES_BEFORE_BACKOFF} failed starts: "
            ), description
            # What the operator sees: healthy and schedulable, yet skipped, and why.
            said = sandboxd_admin(cp, "runners", "status", "a-broken")
            assert said.returncode == 0, said.stderr
            assert said.stdout.startswith(
                "runner a-broken: schedulable, healthy, 0 sandbox(es); placement skips it "
            ), said.stdout
            assert f"after {FAILURES_BEFORE_BACKOFF} failed start(s) in a row (last: " in (
                said.stdout
            )
            assert NO_NETWORK in said.stdout, said.stdout
            with cp.discovery() as client:  # what users and the web console see
                assert client.get_runner("a-broken").HasField("backed_off_until")
                assert not client.get_runner("b-fine").HasField("backed_off_until")
        finally:
            stop_all(gateway, running)


SLOW_BROKEN_FIREWALL = """#!/bin/sh
# sandboxd's test: a broken host firewall that takes its time to refuse each change.
sleep 0.05
echo "iptables-restore: line 2 failed: the kernel's tables cannot be reached" >&2
exit 1
"""


@pytest.mark.parametrize("moment", ["while it fails", "once moved"])
def test_a_control_plane_killed_while_a_start_moves_runs_it_once_or_fails_it(
    tmp_path: Path, moment: str
) -> None:
    """The control plane is SIGKILLed right after a Start that lands on ``a-broken`` (whose
    firewall refuses each change after a moment), or right after the start was moved to
    ``b-fine``, and restarts on the same data. Either way the sandbox then runs in exactly
    one place, ``b-fine``: once the move was stored, ``b-fine`` may or may not have had the
    start (it is sent again); before it, the restarted control plane sends the start to
    ``a-broken`` again and moves it from the request stored with the sandbox
    (``held_requests.py``). Before that was stored, a start killed "while it fails" ended
    FAILED on ``a-broken``. Its processes run on ``b-fine`` only."""
    env = firewall_env(tmp_path / "slow-broken-firewall", SLOW_BROKEN_FIREWALL)
    with two_runners(tmp_path, ("a-broken", "b-fine"), first_env=env) as (gateway, cp):
        keep = [start(gateway, runner_ids=["b-fine"])]  # so a-broken is the least loaded
        try:
            assert wait_status(gateway, keep[0], g.SANDBOX_STATUS_RUNNING).runner_id
            sandbox_id = start(gateway)
            if moment == "once moved":
                request = g.GetSandboxRequest(sandbox_id=sandbox_id)
                wait_until(
                    "the start moved to b-fine",
                    lambda: gateway.Get(request, timeout=10).runner_id == "b-fine",
                    60,
                    interval=0.01,
                )
            cp.kill()
            cp.start()
            with cp.channel() as channel:
                again: Gateway = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
                got = wait_status(
                    again, sandbox_id, g.SANDBOX_STATUS_RUNNING, g.SANDBOX_STATUS_FAILED
                )
                assert (got.sandbox_status, got.runner_id) == (
                    g.SANDBOX_STATUS_RUNNING,
                    "b-fine",
                ), got.status_reason
                b_group = f"sandboxd-{backend_key(tmp_path / 'b-data')}/{sandbox_id}"
                pids = wait_until("its processes", lambda: sandbox_pids(sandbox_id), 30)
                for pid in pids:
                    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
                    assert b_group in cgroup, cgroup
                keep.append(sandbox_id)
                stop_all(again, keep)
                keep.clear()
        finally:
            if keep:
                stop_all(gateway, keep)
