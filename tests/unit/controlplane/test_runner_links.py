"""Both runner links, gRPC and in-process, against a real control plane, by the same tests.

Each test runs once over the control plane's listening port (how a remote runner connects)
and once over its in-process link (how ``sandboxd up`` connects its runner,
:mod:`sandboxd.controlplane.local_link`). Real control plane (store, registry, identity,
operations), real runner agent; the runner has no sandbox backend, so operations are
answered by its in-band refusal, which still crosses the link both ways. What must hold on
either link: joining with a token and rejoining with the stored credential, the identity
checks on every call (forged, wrong-runner and revoked credentials; join tokens on
``Operate``; a connection id that is not the runner's current one), operations bound to the
runner's idle streams, and the ends: a runner that stops reads disconnected at once, a
connection the control plane ends is redialled and serves again, and a stopped control
plane ends the runner's session instead of leaving it hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandboxd.config import load_config
from sandboxd.controlplane.runner_service import CONNECTION_HEADER
from sandboxd.controlplane.server import ControlPlane, ControlPlaneSettings
from sandboxd.runner import RunnerAgent, RunnerRejectedError
from sandboxd.runner.credentials import load_credential, save_credential
from sandboxd.runner.settings import RunnerSettings
from sandboxd.runner.stream import bearer, open_channel, runner_stub
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.support.polling import until

LINKS = ["grpc", "in-process"]
RUNNER = "links-r1"
CAPS = runner_pb2.Capabilities(
    cpu_millicores=2000, memory_bytes=4 << 30, architectures=["amd64"], hostname="links"
)


class Setup:
    """A started control plane and the runner settings/links for one test."""

    def __init__(self, control_plane: ControlPlane, link: str, state_dir: Path) -> None:
        self.control_plane = control_plane
        self.link = link
        self.state_dir = state_dir
        self.stopped = False

    async def stop(self) -> None:
        """Stop the control plane now (the test goes on without it)."""
        self.stopped = True
        await self.control_plane.stop(grace=0.5)

    def channel(self) -> Any:
        """A new channel of this test's link (what a runner session opens)."""
        if self.link == "grpc":
            return open_channel(RunnerSettings(control_plane=self.control_plane.base_url).address)
        assert self.control_plane.local_runners is not None
        return self.control_plane.local_runners.channel()

    def agent(self, join_token: str = "", runner_id: str = RUNNER) -> RunnerAgent:
        settings = RunnerSettings(
            control_plane=self.control_plane.base_url,
            join_token=join_token,
            runner_id=runner_id,
            state_dir=self.state_dir,
            heartbeat_interval=0.2,
            reconnect_backoff_min=0.05,
            reconnect_backoff_max=0.2,
        )
        factory = None if self.link == "grpc" else self.channel
        return RunnerAgent(settings, capabilities=CAPS, link=factory)

    def healthy(self, runner_id: str = RUNNER) -> bool:
        registry = self.control_plane.registry
        state = registry.get(runner_id)
        return state is not None and registry.is_healthy(state)

    async def token(self, runner_id: str = RUNNER) -> str:
        _, secret = await self.control_plane.identity.create_join_token(
            runner_id=runner_id, ttl_seconds=600
        )
        return secret


@asynccontextmanager
async def started(tmp_path: Path, link: str) -> AsyncIterator[Setup]:
    settings = ControlPlaneSettings(
        data_dir=tmp_path / "cp",
        config=load_config(None),
        listen="127.0.0.1:0",
        heartbeat_interval=0.2,
    )
    control_plane = ControlPlane(settings)
    await control_plane.start()
    setup = Setup(control_plane, link, tmp_path / "runner")
    try:
        yield setup
    finally:
        if not setup.stopped:
            await control_plane.stop(grace=0.5)


@asynccontextmanager
async def running(agent: RunnerAgent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def scenario(tmp_path: Path, link: str, body: Callable[[Setup], Awaitable[None]]) -> None:
    async def main() -> None:
        async with started(tmp_path, link) as setup:
            async with asyncio.timeout(120):
                await body(setup)

    asyncio.run(main())


async def read_status(call: Any) -> grpc.StatusCode:
    """The status a call ends with, reading until it does."""
    try:
        while isinstance(await call.read(), runner_pb2.OperationDown | runner_pb2.ControlMessage):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("link", LINKS)
def test_joins_with_a_token_then_rejoins_with_its_stored_credential(
    tmp_path: Path, link: str
) -> None:
    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent):
            await until("the runner registered", lambda: setup.healthy() and agent.has_credential)
        credential = load_credential(setup.state_dir, RUNNER)
        assert credential is not None
        await until("the stopped runner reads disconnected", lambda: not setup.healthy())
        # A later start presents the stored credential; no token is needed any more.
        again = setup.agent()
        async with running(again):
            await until("the runner rejoined with its credential", setup.healthy)
        assert load_credential(setup.state_dir, RUNNER) == credential

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("problem", ["forged", "revoked"])
def test_a_bad_credential_is_refused_on_either_link(
    tmp_path: Path, link: str, problem: str
) -> None:
    async def body(setup: Setup) -> None:
        if problem == "forged":
            save_credential(setup.state_dir, RUNNER, "sbxr_forged_credential_0000")
        else:
            agent = setup.agent(join_token=await setup.token())
            async with running(agent):
                await until("the runner registered", lambda: agent.has_credential)
            await setup.control_plane.identity.revoke_runner(RUNNER)
        with pytest.raises(RunnerRejectedError) as refused:
            await setup.agent().run()
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert not setup.healthy()

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_a_credential_registers_only_its_own_runner_id(tmp_path: Path, link: str) -> None:
    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent):
            await until("the runner registered", lambda: agent.has_credential)
        credential = load_credential(setup.state_dir, RUNNER)
        assert credential is not None
        channel = setup.channel()
        try:
            call = runner_stub(channel).Connect(metadata=bearer(credential))
            register = runner_pb2.Register(runner_id="links-r2", capabilities=CAPS)
            await call.write(runner_pb2.RunnerMessage(register=register))
            assert await read_status(call) is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await channel.close(None)
        assert setup.control_plane.registry.get("links-r2") is None

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_operate_calls_are_checked_like_connect(tmp_path: Path, link: str) -> None:
    """A join token, a missing or stale connection id: refused before anything is bound."""

    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent):
            await until("the runner registered", lambda: setup.healthy() and agent.has_credential)
            credential = load_credential(setup.state_dir, RUNNER)
            assert credential is not None
            state = setup.control_plane.registry.get(RUNNER)
            assert state is not None and state.link is not None
            link = state.link
            await until("the runner's idle pool is full", lambda: link.idle == link.idle_limit)
            channel = setup.channel()
            try:
                stub = runner_stub(channel)
                token = await setup.token()
                cases = {
                    "join token": (bearer(token), grpc.StatusCode.UNAUTHENTICATED),
                    "no connection": (bearer(credential), grpc.StatusCode.FAILED_PRECONDITION),
                    "stale connection": (
                        (*bearer(credential), (CONNECTION_HEADER, "999999")),
                        grpc.StatusCode.FAILED_PRECONDITION,
                    ),
                    "no credential": ((), grpc.StatusCode.UNAUTHENTICATED),
                }
                for name, (metadata, code) in cases.items():
                    call = stub.Operate(metadata=metadata)
                    assert await read_status(call) is code, name
            finally:
                await channel.close(None)
            assert link.idle == link.idle_limit  # nothing joined (nor left) the runner's pool

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_operations_cross_the_link_both_ways(tmp_path: Path, link: str) -> None:
    """Exec and file operations bound to idle streams, answered by the runner (no backend)."""

    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent):
            await until("the runner registered", lambda: setup.healthy() and agent.has_credential)
            state = setup.control_plane.registry.get(RUNNER)
            assert state is not None and state.link is not None
            await until("idle operation streams", lambda: state.link and state.link.idle)
            operations = setup.control_plane.operations
            for _ in range(20):  # more than the idle pool: replacements are dialled
                exec_open = runner_pb2.OperationDown(
                    exec=runner_pb2.OpenExec(sandbox_id="sb-x", command=["true"])
                )
                operation = await operations.open(RUNNER, state.link, exec_open)
                try:
                    frame = await operation.receive()
                    assert frame.exec.error.code == "BACKEND_UNAVAILABLE"
                    assert await operation.receive() is None  # the runner ended its side
                finally:
                    operation.close()
            write_open = runner_pb2.OperationDown(
                write_file=runner_pb2.OpenFileWrite(sandbox_id="sb-x", path="/tmp/f")
            )
            operation = await operations.open(RUNNER, state.link, write_open, raw_data=True)
            try:
                frame = await operation.receive()
                assert frame.done.failure.reason == "CWSANDBOX_BACKEND_UNAVAILABLE"
            finally:
                operation.close()
            assert len(operations) == 0

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_a_runner_that_stops_reads_disconnected_and_its_operations_fail(
    tmp_path: Path, link: str
) -> None:
    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent) as task:
            await until("the runner registered", lambda: setup.healthy() and agent.has_credential)
            state = setup.control_plane.registry.get(RUNNER)
            assert state is not None and state.link is not None
            link_before = state.link
            await until("idle operation streams", lambda: link_before.idle)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await until("the runner reads disconnected", lambda: not setup.healthy(), 10)
            assert link_before.closed.is_set()
            assert link_before.idle == 0

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_a_stopped_control_plane_ends_the_runners_session(tmp_path: Path, link: str) -> None:
    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent) as task:
            await until("the runner registered", lambda: agent.connected)
            await setup.stop()
            await until("the runner noticed", lambda: not agent.connected, 15)
            assert not task.done()  # it keeps redialling, as it would a remote control plane

    scenario(tmp_path, link, body)


@pytest.mark.parametrize("link", LINKS)
def test_a_connection_the_control_plane_ends_is_redialled_and_serves_again(
    tmp_path: Path, link: str
) -> None:
    """The control plane ending the stream (a clean end) is a redial, then work goes on."""

    async def body(setup: Setup) -> None:
        agent = setup.agent(join_token=await setup.token())
        async with running(agent):
            await until("the runner registered", lambda: setup.healthy() and agent.has_credential)
            registry = setup.control_plane.registry
            first = registry.get(RUNNER)
            assert first is not None and first.link is not None
            old = first.link
            old.close()  # what a superseded or revoked connection gets
            await until(
                "the runner is back on a new connection",
                lambda: (
                    (state := registry.get(RUNNER)) is not None
                    and state.link is not None
                    and state.link is not old
                    and setup.healthy()
                ),
            )
            state = registry.get(RUNNER)
            assert state is not None and state.link is not None
            new = state.link
            await until("idle operation streams on the new connection", lambda: new.idle)
            exec_open = runner_pb2.OperationDown(
                exec=runner_pb2.OpenExec(sandbox_id="sb-x", command=["true"])
            )
            operation = await setup.control_plane.operations.open(RUNNER, new, exec_open)
            try:
                frame = await operation.receive()
                assert frame.exec.error.code == "BACKEND_UNAVAILABLE"
            finally:
                operation.close()

    scenario(tmp_path, link, body)
