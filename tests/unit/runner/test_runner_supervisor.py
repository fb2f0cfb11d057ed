"""The runner's sandbox supervisor against an in-memory stand-in backend.

The stand-in (``backend_standin.py``) only stands in for a real backend, which has its own
conformance suite; the lead writes the end-to-end tests with real sandboxes. These tests pin
what the supervisor itself decides: results and events and their order, the profile
re-check, the ledger, the lifetime and retention. File commands and recovery after a restart
have their own modules (``test_runner_supervisor_files.py``, ``..._recovery.py``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, IngressMode, PublishedPort
from sandboxd.runner.resources import Reservation
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start, stop

RUNNING = runner_pb2.SANDBOX_PHASE_RUNNING
COMPLETED = runner_pb2.SANDBOX_PHASE_COMPLETED
FAILED = runner_pb2.SANDBOX_PHASE_FAILED


def test_start_answers_started_after_a_running_event(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        result = await rig.run("1", **start(spec()))
        assert result.WhichOneof("result") == "started"
        assert not result.HasField("failure")
        assert rig.outbox.kinds() == ["event:SANDBOX_PHASE_RUNNING", "result:1"]
        event = rig.outbox.messages[0].event
        assert event.sandbox_id == "sb-1" and not event.HasField("exit_code")
        assert rig.ledger.reservation("sb-1") == Reservation(1000, 1 << 30, 0)
        backend_spec = rig.backend.world["sb-1"].spec
        assert backend_spec.image == "busybox:latest"  # a reference, resolved by the backend
        assert backend_spec.network.egress is EgressType.NONE
        assert backend_spec.network.ingress is None
        assert (tmp_path / "records" / "sb-1.jsonl").is_file()  # survives a runner restart
        assert [e.phase for e in rig.supervisor.snapshot()] == [RUNNING]

    run_rig(tmp_path, body)


def test_spec_mapping_network_ports_and_service_address(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.ports = (
            PublishedPort(8080, "0.0.0.0", 40001),
            PublishedPort(9090, "0.0.0.0", 40002),
        )
        network = runner_pb2.NetworkPolicy(
            egress_type="allowlist",
            egress_cidrs=["10.1.0.0/16"],
            ingress_type="public",
            exposed_ports=[8080, 9090],
        )
        s = spec(
            network=network,
            command=["python", "-m", "http.server"],
            environment={"A": "1"},
            working_dir="/srv",
            cpu_millicores=1500,
            memory_bytes=1 << 29,
            pids_max=64,
            disk_bytes=2 << 30,
            max_lifetime_seconds=600,
            mounted_files=[runner_pb2.MountedFile(path="/etc/x", content=b"x")],
        )
        result = await rig.run("1", **start(s))
        assert result.started.service_address == "runner.example:40001"
        assert dict(result.started.published_ports) == {8080: 40001, 9090: 40002}
        mapped = rig.backend.world["sb-1"].spec
        assert mapped.network.egress is EgressType.ALLOWLIST
        assert mapped.network.cidrs == ("10.1.0.0/16",)
        assert mapped.network.ingress is IngressMode.PUBLIC
        assert mapped.network.exposed_ports == (8080, 9090)
        assert mapped.command == ("python", "-m", "http.server")
        assert dict(mapped.env) == {"A": "1"} and mapped.workdir == "/srv"
        assert (mapped.cpu_millicores, mapped.memory_bytes, mapped.pids_max) == (1500, 1 << 29, 64)
        assert mapped.disk_bytes == 2 << 30
        assert mapped.mounted_files[0].path == "/etc/x" and mapped.mounted_files[0].data == b"x"
        # The backend's own lifetime is a later backstop; the runner enforces the real one.
        assert mapped.max_lifetime_seconds is not None and mapped.max_lifetime_seconds > 600

    run_rig(tmp_path, body)


def test_internal_ingress_address_is_loopback(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.ports = (PublishedPort(80, "127.0.0.1", 40100),)
        network = runner_pb2.NetworkPolicy(ingress_type="internal", exposed_ports=[80])
        result = await rig.run("1", **start(spec(network=network)))
        assert result.started.service_address == "127.0.0.1:40100"

    run_rig(tmp_path, body)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cpu_millicores": 3000, "limits": runner_pb2.ProfileLimits(max_cpu_millicores=2000)},
         "cpu_millicores"),
        ({"memory_bytes": 2 << 30, "limits": runner_pb2.ProfileLimits(max_memory_bytes=1 << 30)},
         "memory_bytes"),
        ({"disk_bytes": 9 << 30, "limits": runner_pb2.ProfileLimits(max_disk_bytes=1 << 30)},
         "disk_bytes"),
        ({"pids_max": 500, "limits": runner_pb2.ProfileLimits(max_pids=100)}, "pids_max"),
        ({"gpu_count": 2, "limits": runner_pb2.ProfileLimits(max_gpu_count=1)}, "gpu_count"),
        ({"network": runner_pb2.NetworkPolicy(egress_type="internet"),
          "limits": runner_pb2.ProfileLimits(egress_types=["none"])}, "network.egress_type"),
        ({"reservation": runner_pb2.Reservation(cpu_millicores=4000),
          "limits": runner_pb2.ProfileLimits(max_cpu_millicores=2000)},
         "reservation.cpu_millicores"),
    ],
)  # fmt: skip
def test_profile_ceilings_are_checked_again(tmp_path: Path, fields: dict, field: str) -> None:
    async def body(rig: Rig) -> None:
        result = await rig.run("1", **start(spec(profile_name="small", **fields)))
        assert result.failure.reason == "CWSANDBOX_PROFILE_MISMATCH"
        assert result.failure.code == 9
        assert result.failure.metadata["field"] == field
        assert result.failure.metadata["profile"] == "small"
        assert rig.backend.calls == [] and "sb-1" not in rig.ledger
        assert rig.supervisor.snapshot() == [] and rig.outbox.kinds() == ["result:1"]

    run_rig(tmp_path, body)


def test_unset_limits_run_with_the_profile_ceiling(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        limits = runner_pb2.ProfileLimits(
            max_cpu_millicores=2000, max_memory_bytes=1 << 30, max_pids=100, max_disk_bytes=5 << 30
        )
        result = await rig.run("1", **start(spec(limits=limits)))
        assert not result.HasField("failure")
        mapped = rig.backend.world["sb-1"].spec
        assert (mapped.cpu_millicores, mapped.memory_bytes) == (2000, 1 << 30)
        assert (mapped.pids_max, mapped.disk_bytes) == (100, 5 << 30)

    run_rig(tmp_path, body)


@pytest.mark.parametrize(
    ("fields", "code", "reason", "field"),
    [
        ({"sandbox_id": ""}, 3, "CWSANDBOX_INVALID_ARGUMENT", "sandbox_id"),
        ({"sandbox_id": "bad id!"}, 3, "CWSANDBOX_INVALID_ARGUMENT", "sandbox_id"),
        ({"working_dir": "relative"}, 3, "CWSANDBOX_INVALID_ARGUMENT", "workdir"),
        ({"network": runner_pb2.NetworkPolicy(egress_type="moon")}, 3,
         "CWSANDBOX_INVALID_ARGUMENT", "network.egress_type"),
        ({"image": "Not A Name"}, 3, "CWSANDBOX_INVALID_ARGUMENT", "image"),
        ({"image": "python:3.11"}, 9, "", "image"),
        ({"gpu_count": 1}, 9, "", "gpu_count"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_field(
    tmp_path: Path, fields: dict, code: int, reason: str, field: str
) -> None:
    async def body(rig: Rig) -> None:
        result = await rig.run("1", **start(spec(**fields)))
        assert (result.failure.code, result.failure.reason) == (code, reason)
        if reason:
            assert result.failure.metadata["field"] == field
        elif field == "image":  # names the command that would provide it
            assert "sandboxd images build python:3.11" in result.failure.message
        assert len(rig.ledger) == 0

    run_rig(tmp_path, body)


def test_capacity_exhausted_leaves_nothing_behind(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        big = runner_pb2.Reservation(cpu_millicores=3000, memory_bytes=1 << 30)
        assert not (await rig.run("1", **start(spec("a", reservation=big)))).HasField("failure")
        result = await rig.run("2", **start(spec("b", reservation=big)))
        assert result.failure.code == 8
        assert result.failure.reason == "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"
        assert result.failure.metadata["resource"] == "cpu_millicores"
        assert "b" not in rig.ledger and "b" not in rig.backend.world
        assert [e.sandbox_id for e in rig.supervisor.snapshot()] == ["a"]

    run_rig(tmp_path, body)


def test_start_failure_releases_and_destroys(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.fail_start.add("sb-1")
        result = await rig.run("1", **start(spec(command=["/nope"])))
        assert result.failure.code == 9 and "nope" in result.failure.message
        assert "sb-1" not in rig.ledger and "sb-1" not in rig.backend.world
        assert rig.backend.calls[-1] == ("destroy", "sb-1")
        assert rig.supervisor.snapshot() == []

    run_rig(tmp_path, body)


def test_repeated_start_answers_again_and_duplicate_of_ended_is_refused(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        first = await rig.run("1", **start(spec()))
        again = await rig.run("2", **start(spec()))
        assert again.started == first.started and rig.backend.calls.count(("create", "sb-1")) == 1
        await rig.run("3", **stop())
        ended = await rig.run("4", **start(spec()))
        assert ended.failure.code == 6

    run_rig(tmp_path, body)


def test_main_process_exit_reports_completed_with_its_code(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        rig.backend.exit_main("sb-1", 3)
        event = (await rig.outbox.next("event")).event
        assert (event.phase, event.exit_code, event.reason) == (COMPLETED, 3, "")
        assert "sb-1" not in rig.ledger
        snap = rig.supervisor.snapshot()
        assert [(e.phase, e.exit_code) for e in snap] == [(COMPLETED, 3)]

    run_rig(tmp_path, body)


def test_oom_is_named_in_the_reason(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        rig.backend.exit_main("sb-1", 137, "oom")
        event = (await rig.outbox.next("event")).event
        assert event.exit_code == 137 and "out of memory" in event.reason

    run_rig(tmp_path, body)


@pytest.mark.parametrize(
    ("command", "code"),
    [([], 0), (["sleep", "infinity"], 143)],  # the default keep-alive traps SIGTERM
)
def test_stop_sends_completed_before_its_result(tmp_path: Path, command: list, code: int) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec(command=command)))
        result = await rig.run("2", **stop(grace=7))
        assert result.WhichOneof("result") == "state"  # the stop answers with the end itself
        assert (result.state.phase, result.state.exit_code) == (
            runner_pb2.SANDBOX_PHASE_COMPLETED,
            code,
        )
        assert rig.outbox.kinds() == [
            "event:SANDBOX_PHASE_RUNNING",
            "result:1",
            "event:SANDBOX_PHASE_COMPLETED",
            "result:2",
        ]
        event = rig.outbox.messages[2].event
        assert (event.exit_code, event.reason) == (code, "stopped")
        assert rig.backend.world["sb-1"].stops == [7]
        assert "sb-1" not in rig.ledger
        # Stopping again succeeds and repeats the final state (it may have been lost).
        assert (await rig.run("3", **stop())).state.exit_code == code
        assert rig.outbox.kinds()[-2:] == ["event:SANDBOX_PHASE_COMPLETED", "result:3"]
        assert rig.backend.calls.count(("stop", "sb-1")) == 1

    run_rig(tmp_path, body)


def test_stop_during_start_waits_for_the_start(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.start_delay = 0.2
        rig.command("1", **start(spec()))
        await asyncio.sleep(0.05)
        result = await rig.run("2", **stop())
        assert result.WhichOneof("result") == "state"
        kinds = rig.outbox.kinds()
        assert (
            kinds.index("event:SANDBOX_PHASE_RUNNING")
            < kinds.index("event:SANDBOX_PHASE_COMPLETED")
            < kinds.index("result:2")
        )
        assert "result:1" in kinds
        assert rig.backend.calls == [("create", "sb-1"), ("start", "sb-1"), ("stop", "sb-1")]

    run_rig(tmp_path, body)


def test_unknown_sandbox_is_not_found(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        result = await rig.run("0", **stop("ghost"))
        not_found = (5, "CWSANDBOX_SANDBOX_NOT_FOUND")
        assert (result.failure.code, result.failure.reason) == not_found
        done = await rig.write_file("/a", b"x", sandbox_id="ghost")
        assert (done.failure.code, done.failure.reason) == not_found
        _, _, done = await rig.read_file("/a", sandbox_id="ghost")
        assert (done.failure.code, done.failure.reason) == not_found
        # Deleting what is not there is done: deletes are idempotent (a repeated delete,
        # or one for a sandbox the runner already removed, must not fail forever).
        result = await rig.run("9", delete=runner_pb2.DeleteSandbox(sandbox_id="ghost"))
        assert result.WhichOneof("result") == "done"

    run_rig(tmp_path, body)


def test_delete_stops_destroys_and_forgets(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        result = await rig.run("2", delete=runner_pb2.DeleteSandbox(sandbox_id="sb-1"))
        assert result.WhichOneof("result") == "done"
        assert rig.outbox.kinds()[-2:] == ["event:SANDBOX_PHASE_COMPLETED", "result:2"]
        assert rig.backend.calls[-2:] == [("stop", "sb-1"), ("destroy", "sb-1")]
        assert rig.supervisor.snapshot() == [] and len(rig.ledger) == 0
        assert not list((tmp_path / "records").iterdir())

    run_rig(tmp_path, body)


def test_max_lifetime_stops_with_the_reason(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec(max_lifetime_seconds=1, command=["sleep", "1000"])))
        started = time.monotonic()
        event = (await rig.outbox.next("event", timeout=5)).event
        assert 0.8 < time.monotonic() - started < 3
        assert (event.phase, event.exit_code) == (COMPLETED, 143)
        assert event.reason == "max lifetime of 1 s reached"
        assert rig.backend.world["sb-1"].stops == [10.0]
        assert "sb-1" not in rig.ledger

    run_rig(tmp_path, body)


def test_ended_sandboxes_are_destroyed_after_retention(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        rig.backend.exit_main("sb-1", 0)
        await rig.outbox.next("event")
        await asyncio.sleep(0.3)
        assert "sb-1" not in rig.backend.world and rig.supervisor.snapshot() == []

    run_rig(tmp_path, body, retain_exited_seconds=0.1)


def test_a_slow_command_does_not_block_others(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec("fast")))
        rig.backend.start_delay = 3.0
        rig.command("2", **start(spec("slow")))
        began = time.monotonic()
        await rig.run("3", **stop("fast"))
        await rig.read_file("/missing", sandbox_id="fast")
        assert time.monotonic() - began < 2.0  # not behind the 3 s start
        assert rig.outbox.kinds()[-1] == "result:3"
        await rig.outbox.result("2")

    run_rig(tmp_path, body)
