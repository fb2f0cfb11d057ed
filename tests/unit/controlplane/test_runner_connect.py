"""A runner connection that ends at any point after registering reads disconnected at once.

gRPC cancels a stream handler when its client goes away; the handler must mark the runner
disconnected whichever await that cancellation lands in. Seen in CI: a runner stopped while
the control plane was still applying its snapshot (a slow store under load) stayed listed
healthy until the health timeout. The handler is driven directly here, the way grpc.aio
drives it (real registry, lifecycle and store; the runner's messages are played by the test;
the cancellation stands in for the client's disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from sandboxd.config import load_config
from sandboxd.controlplane import caller
from sandboxd.controlplane.caller import RunnerCaller
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_service import RunnerService
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.store import Store
from sandboxd_protocol.sandboxd_v1 import runner_pb2


async def runner_messages(stay: asyncio.Event) -> AsyncIterator[runner_pb2.RunnerMessage]:
    register = runner_pb2.Register(
        runner_id="r1",
        capabilities=runner_pb2.Capabilities(cpu_millicores=4000, memory_bytes=8 << 30),
    )
    yield runner_pb2.RunnerMessage(register=register)
    await stay.wait()


def service(tmp_path: Path) -> tuple[RunnerService, RunnerRegistry, Reconcilers]:
    store = Store.sqlite(tmp_path / "cp.db")
    registry = RunnerRegistry(load_config(None))
    records = SandboxRecords(store.sandboxes, registry)
    reconcilers = Reconcilers(records, registry)
    lifecycle = Lifecycle(registry, records, Quotas(load_config(None).quotas), reconcilers)
    identity: Any = None  # a credentialed runner never reaches the identity service
    runner_service = RunnerService(registry, identity, 0.5, lifecycle)
    return runner_service, registry, reconcilers


def connected(registry: RunnerRegistry) -> bool:
    state = registry.get("r1")
    return state is not None and registry.is_healthy(state)


@pytest.mark.parametrize("where", ["greeting", "snapshot", "serving"])
def test_a_runner_that_leaves_reads_disconnected_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    async def scenario() -> None:
        runner_service, registry, reconcilers = service(tmp_path)
        snapshot_started = asyncio.Event()
        release_snapshot = asyncio.Event()
        real_on_register = reconcilers.on_register

        async def slow_on_register(runner_id: str, register: runner_pb2.Register) -> None:
            snapshot_started.set()
            if where == "snapshot":
                await release_snapshot.wait()  # a store that does not answer
            await real_on_register(runner_id, register)

        monkeypatch.setattr(reconcilers, "on_register", slow_on_register)
        caller.bind(RunnerCaller("r1", "cred-1", "default"))
        stay = asyncio.Event()
        handler = cast(
            AsyncGenerator[runner_pb2.ControlMessage],
            runner_service.Connect(runner_messages(stay), context=None),  # type: ignore[arg-type]
        )
        greeting = await anext(handler)
        assert greeting.WhichOneof("message") == "registered"
        assert connected(registry)
        if where == "greeting":
            await handler.aclose()  # the client went away before asking for more
        else:
            serving = asyncio.ensure_future(anext(handler))
            async with asyncio.timeout(5):
                await snapshot_started.wait()
            # Take what the control plane sends at once (commands after the snapshot) until
            # the handler parks: in the snapshot, or waiting for the next command.
            while (await asyncio.wait({serving}, timeout=0.2))[0]:
                assert serving.result().WhichOneof("message") == "command"
                serving = asyncio.ensure_future(anext(handler))
            serving.cancel()  # what grpc.aio does when the client disconnects
            with pytest.raises((asyncio.CancelledError, StopAsyncIteration)):
                await serving
        assert not connected(registry), f"still listed healthy after leaving in the {where}"
        state = registry.get("r1")
        assert state is not None and state.link is None
        stay.set()

    asyncio.run(scenario())
