"""Runners that cannot run sandboxes do not attract them: real control plane, real runners.

A ``sandboxd runner --backend none`` next to a working one (root, local backend, real
sandboxes): every Start lands on the working one, though the broken one stays the least
loaded; with only the broken one a Start is refused naming it, and discovery still lists it.
A runner whose starts keep failing (an impersonated runner answering every start with an
error) is backed off, and the rejection says so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sandboxd.up import ensure_default_image
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc
from tests.integration.test_placement_rejections import details
from tests.support.fake_runner import FakeRunner
from tests.support.processes import ControlPlaneProcess, RunnerProcess

pytestmark = pytest.mark.e2e
NO_BACKEND = "runner broken: no working backend (local: disabled (--backend none))"
SMALL = g.ResourceRequest(cpu="50m", memory="32Mi")


@dataclass
class Pair:
    control_plane: ControlPlaneProcess
    gateway: gateway_pb2_grpc.GatewayServiceStub


def start(gateway: gateway_pb2_grpc.GatewayServiceStub, **fields: object) -> str:
    request = g.StartSandboxRequest(
        command="sleep",
        args=["60"],
        resource_requests=SMALL,
        **fields,  # type: ignore[arg-type]
    )
    return str(gateway.Start(request, timeout=30).sandbox_id)


def refused(gateway: gateway_pb2_grpc.GatewayServiceStub, **fields: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        start(gateway, **fields)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return caught.value


def wait_status(
    gateway: gateway_pb2_grpc.GatewayServiceStub, sandbox_id: str, *wanted: int
) -> g.GetSandboxResponse:
    """Poll until the sandbox has left CREATING (or 60 s passed); it must be one of ``wanted``."""
    deadline = time.monotonic() + 60
    while True:
        got = gateway.Get(g.GetSandboxRequest(sandbox_id=sandbox_id), timeout=30)
        if got.sandbox_status != g.SANDBOX_STATUS_CREATING:
            assert got.sandbox_status in wanted, got
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def broken_runner(cp: ControlPlaneProcess, root: Path) -> RunnerProcess:
    return RunnerProcess(cp, root / "broken", "broken", extra_args=["--backend", "none"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("the working runner's local backend needs root")
    root = tmp_path_factory.mktemp("pair")
    ensure_default_image(root / "working-data")  # from the machine-wide build cache
    cp = ControlPlaneProcess(data_dir=root / "cp").start()
    runners = [
        broken_runner(cp, root).start(),
        RunnerProcess(
            cp,
            root / "working",
            "working",
            extra_args=["--backend", "local", "--data-dir", str(root / "working-data")],
        ).start(),
    ]
    channel = cp.channel()
    try:
        with cp.discovery() as client:
            for runner_id in ("broken", "working"):
                client.wait_for(runner_id, healthy=True, timeout=60)
        yield Pair(cp, gateway_pb2_grpc.GatewayServiceStub(channel))  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        for runner in runners:
            runner.stop()
        cp.stop()


def test_every_start_lands_on_the_working_runner(pair: Pair) -> None:
    started = [start(pair.gateway) for _ in range(4)]
    try:
        for sandbox_id in started:
            got = wait_status(pair.gateway, sandbox_id, g.SANDBOX_STATUS_RUNNING)
            assert got.runner_id == "working"
        with pair.control_plane.discovery() as client:
            runners = {r.runner_id: r for r in client.all_runners(view=2)}
        assert runners["broken"].healthy  # listed as ever, and still the least loaded
        assert runners["broken"].resources.running_sandboxes == 0
        assert runners["working"].resources.running_sandboxes == len(started)
    finally:
        for sandbox_id in started:
            stop = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=0)
            pair.gateway.Stop(stop, timeout=60)


def test_naming_the_broken_runner_is_refused_with_its_reason(pair: Pair) -> None:
    error = refused(pair.gateway, runner_ids=["broken"])
    info, violations = details(error)
    assert info.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
    assert violations == [("runner_ids", NO_BACKEND)]
    assert NO_BACKEND in (error.details() or "")


def test_with_only_the_broken_runner_every_start_is_refused_naming_it(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    runner = broken_runner(cp, tmp_path).start()
    channel = cp.channel()
    try:
        with cp.discovery() as client:
            client.wait_for("broken", healthy=True)
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        error = refused(gateway)
        info, violations = details(error)
        assert info.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
        assert violations == [("runner_ids", NO_BACKEND)]
        assert info.metadata["broken"] == "no working backend"
    finally:
        channel.close()
        runner.stop()
        cp.stop()


def test_a_runner_whose_starts_keep_failing_is_backed_off(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    channel = cp.channel()
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]

    async def scenario() -> None:
        async with FakeRunner(cp.target, cp.join_token, "flaky") as flaky:
            await flaky.connect()
            for attempt in range(3):
                sandbox_id = await asyncio.to_thread(start, gateway, runner_ids=["flaky"])
                command = await flaky.command()
                assert command.start.spec.sandbox_id == sandbox_id
                failure = runner_pb2.Failure(
                    code=grpc.StatusCode.UNAVAILABLE.value[0],
                    reason="CWSANDBOX_BACKEND_UNAVAILABLE",
                    message=f"cgroup vanished ({attempt})",
                )
                await flaky.answer(command, failure=failure)
                got = await asyncio.to_thread(
                    wait_status, gateway, sandbox_id, g.SANDBOX_STATUS_FAILED
                )
                assert got.runner_id == "flaky"
            error = await asyncio.to_thread(refused, gateway, runner_ids=["flaky"])
            _, violations = details(error)
            [(field, description)] = violations
            assert field == "runner_ids"
            assert description.startswith(
                "runner flaky: backed off after 3 failed starts: cgroup vanished (2), until "
            )

    try:
        asyncio.run(scenario())
    finally:
        channel.close()
        cp.stop()
