"""The agent with sandboxes: Register carries them, commands are dispatched, execs are bound.

Against the in-process fake control plane of ``conftest.py`` (a real grpc.aio server on
127.0.0.1) and the stand-in backend of ``backend_standin.py`` (which stands in for a real
backend; those have their own conformance suite, and the lead writes end-to-end tests).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.errors import RunnerExhausted
from sandboxd.runner import RunnerAgent
from sandboxd.runner.records import RunnerRecord
from sandboxd.runner.resources import Reservation
from sandboxd.runner.settings import RunnerSettings
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.unit.runner.backend_standin import StandinBackend
from tests.unit.runner.exec_standin import ExecStandin, image_store, spec

CAPS = runner_pb2.Capabilities(
    cpu_millicores=4000, memory_bytes=8 << 30, hostname="test-host", backends=["local"]
)


def make_agent(url: str, tmp_path: Path, **kwargs: Any) -> RunnerAgent:
    settings = RunnerSettings(
        control_plane=url,
        join_token="good-token",
        state_dir=tmp_path / "state",
        heartbeat_interval=0.2,
        reconnect_backoff_min=0.05,
        reconnect_backoff_max=0.2,
    )
    return RunnerAgent(settings, capabilities=CAPS, **kwargs)


async def registered(cp: Any, agent: RunnerAgent) -> None:
    """Wait until ``agent`` has registered with ``cp`` and holds the connection."""
    await cp.next_message("register")
    async with asyncio.timeout(5):
        while not agent.connected:
            await asyncio.sleep(0.01)


async def run_agent(agent: RunnerAgent, body: Any) -> None:
    task = asyncio.create_task(agent.run())
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_register_advertises_backend_images_and_recovered_sandboxes(
    fake_control_plane, tmp_path: Path
) -> None:
    async def main() -> None:
        backend = StandinBackend(images=image_store(tmp_path))
        await backend.create(SandboxSpec("survivor", image="busybox"))
        await backend.start("survivor")
        record = RunnerRecord("survivor", Reservation(cpu_millicores=500), started_at=1.0)
        (tmp_path / "state" / "sandboxes").mkdir(parents=True)
        legacy = tmp_path / "state" / "sandboxes" / "survivor.json"  # an older version's file
        legacy.write_text(json.dumps(record.to_dict()))
        async with fake_control_plane() as cp:
            agent = make_agent(cp.url, tmp_path, backend=backend)

            async def body() -> None:
                register = (await cp.next_message("register")).message.register
                assert list(register.capabilities.backends) == ["standin"]
                assert list(register.capabilities.images) == ["busybox", "busybox:latest"]
                assert register.capabilities.cpu_millicores == CAPS.cpu_millicores
                [event] = register.sandboxes
                assert (event.sandbox_id, event.phase) == (
                    "survivor",
                    runner_pb2.SANDBOX_PHASE_RUNNING,
                )
                assert register.resources.available_cpu_millicores == 3500
                assert register.resources.running_sandboxes == 1

            await run_agent(agent, body)

    asyncio.run(main())


def test_commands_and_execs_flow_through_the_agent(fake_control_plane, tmp_path: Path) -> None:
    async def main() -> None:
        async with ExecStandin() as execs, fake_control_plane(exec_standin=execs) as cp:
            backend = StandinBackend(images=image_store(tmp_path))
            agent = make_agent(cp.url, tmp_path, backend=backend)

            async def body() -> None:
                await registered(cp, agent)
                cp.push(request_id="7", start=runner_pb2.StartSandbox(spec=spec()))
                event = (await cp.next_message("event")).message.event
                assert event.phase == runner_pb2.SANDBOX_PHASE_RUNNING
                result = (await cp.next_message("result")).message.result
                assert result.request_id == "7" and result.WhichOneof("result") == "started"
                heartbeat = (await cp.next_message("heartbeat")).message.heartbeat
                assert heartbeat.resources.running_sandboxes == 1

                # The agent keeps idle Operate calls open; binding one needs no round trip.
                execs.bind(
                    runner_pb2.OperationDown(
                        exec=runner_pb2.OpenExec(stream_id="x1", sandbox_id="sb-1", command=["cat"])
                    )
                )
                stream = await execs.stream("x1")
                # Byte streams carry the credential issued on joining, not the join token.
                assert stream.bearer == cp.credential
                stream.push(stdin=streaming_pb2.ExecStreamData(data=b"ping"))
                stream.push(close=streaming_pb2.ExecStreamClose())
                frames = await stream.until_end()
                assert [f.WhichOneof("response") for f in frames] == ["output", "exit"]
                assert frames[0].output.data == b"ping"

                cp.push(request_id="8", stop=runner_pb2.StopSandbox(sandbox_id="sb-1"))
                event = (await cp.next_message("event")).message.event
                assert (event.phase, event.exit_code) == (runner_pb2.SANDBOX_PHASE_COMPLETED, 0)
                result = (await cp.next_message("result")).message.result
                assert result.request_id == "8" and result.WhichOneof("result") == "state"

            await run_agent(agent, body)
            # Stopping the agent leaves sandboxes to a later recover; the caller closes it.
            assert ("close", "") not in backend.calls

    asyncio.run(main())


def test_without_a_backend_commands_are_refused(fake_control_plane, tmp_path: Path) -> None:
    async def main() -> None:
        async with ExecStandin() as execs, fake_control_plane(exec_standin=execs) as cp:
            agent = make_agent(cp.url, tmp_path)

            async def body() -> None:
                register = (await cp.next_message("register")).message.register
                assert list(register.sandboxes) == [] and list(register.capabilities.images) == []
                while not agent.connected:
                    await asyncio.sleep(0.01)
                cp.push(request_id="1", start=runner_pb2.StartSandbox(spec=spec()))
                result = (await cp.next_message("result")).message.result
                assert result.request_id == "1"
                assert (result.failure.code, result.failure.reason) == (
                    14,
                    "CWSANDBOX_BACKEND_UNAVAILABLE",
                )
                execs.bind(
                    runner_pb2.OperationDown(
                        exec=runner_pb2.OpenExec(stream_id="x", sandbox_id="sb-1", command=["a"])
                    )
                )
                frames = await (await execs.stream("x")).until_end()
                assert [f.error.code for f in frames] == ["BACKEND_UNAVAILABLE"]

            await run_agent(agent, body)

    asyncio.run(main())


class FullDiskBackend(StandinBackend):
    """A stand-in whose disk filled up: every create fails for want of room."""

    room = 1 << 20

    def disk_room_bytes(self) -> int | None:
        return self.room

    async def create(self, spec: SandboxSpec) -> None:
        await super().create(spec)  # an unknown image is refused first, as it is for real
        del self.world[spec.sandbox_id]
        raise RunnerExhausted("disk", "the runner's disk is full: 1.0MiB free")


def test_a_start_refused_for_want_of_room_comes_right_after_a_heartbeat(
    fake_control_plane, tmp_path: Path
) -> None:
    """Placement learns the room that is left before it learns of the failure (on one stream,
    in order), not at the next regular heartbeat; other failures bring no extra heartbeat."""

    async def main() -> None:
        async with fake_control_plane() as cp:
            cp.heartbeat_interval_ms = 600_000  # no regular heartbeat during the test
            backend = FullDiskBackend(images=image_store(tmp_path))
            agent = make_agent(cp.url, tmp_path, backend=backend)

            async def body() -> None:
                await registered(cp, agent)
                cp.push(request_id="1", start=runner_pb2.StartSandbox(spec=spec()))
                first = (await cp.next_message()).message
                assert first.WhichOneof("message") == "heartbeat", first
                assert first.heartbeat.resources.disk_room_bytes == FullDiskBackend.room
                second = (await cp.next_message()).message
                assert second.result.request_id == "1"
                assert second.result.failure.reason == "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"

                bad = spec()
                bad.image = "no-such-image"  # refused for the request, not for the runner
                cp.push(request_id="2", start=runner_pb2.StartSandbox(spec=bad))
                third = (await cp.next_message()).message
                assert third.WhichOneof("message") == "result", third
                assert third.result.request_id == "2"
                assert third.result.failure.reason != "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"

            await run_agent(agent, body)

    asyncio.run(main())
