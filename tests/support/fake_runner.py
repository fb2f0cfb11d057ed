"""A runner impersonated over the real runner protocol, for attacks and protocol checks.

It speaks ``RunnerService`` exactly as a runner would (metadata secret, ``register`` first,
heartbeats, command results, operation streams) but decides itself what to claim and answer,
which is what a stolen join token or a compromised host could do. Everything it talks to is a
real control plane process.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2

BIG = runner_pb2.Capabilities(
    cpu_millicores=512_000,
    memory_bytes=4 << 40,
    architectures=["amd64"],
    hostname="fake-host",
    backends=["local"],
)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


@dataclass
class FakeRunner:
    """One impersonated runner connection; use ``async with``."""

    target: str
    secret: str
    runner_id: str
    capabilities: runner_pb2.Capabilities = field(default_factory=lambda: BIG)
    registered: runner_pb2.Registered | None = None
    _channel: grpc.aio.Channel | None = None
    _call: Any = None
    _beats: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeRunner:
        self._channel = grpc.aio.insecure_channel(self.target)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stub(self) -> runner_pb2_grpc.RunnerServiceStub:
        assert self._channel is not None
        return runner_pb2_grpc.RunnerServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def connect(self) -> runner_pb2.Registered:
        """Register; raises ``grpc.aio.AioRpcError`` when refused. Keeps heartbeating."""
        self._call = self.stub.Connect(metadata=bearer(self.secret))
        resources = runner_pb2.Resources(
            available_cpu_millicores=self.capabilities.cpu_millicores,
            available_memory_bytes=self.capabilities.memory_bytes,
        )
        await self._call.write(
            runner_pb2.RunnerMessage(
                register=runner_pb2.Register(
                    runner_id=self.runner_id,
                    capabilities=self.capabilities,
                    version="fake",
                    resources=resources,
                )
            )
        )
        message = await self._call.read()
        if message is grpc.aio.EOF:
            await self._call  # raises the status
            raise AssertionError("the control plane ended the stream without an answer")
        self.registered = message.registered
        if message.registered.credential:
            self.secret = message.registered.credential
        self._beats = asyncio.create_task(self._heartbeats(resources))
        return message.registered

    async def _heartbeats(self, resources: runner_pb2.Resources) -> None:
        with contextlib.suppress(
            grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError
        ):
            while True:
                await asyncio.sleep(0.5)
                beat = runner_pb2.RunnerMessage(heartbeat=runner_pb2.Heartbeat(resources=resources))
                await self._call.write(beat)

    async def command(self, timeout: float = 10.0) -> runner_pb2.Command:
        """The next command the control plane sends down (snapshot requests are answered
        here: this runner holds no sandboxes beyond what the test drives)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self._call.read()
                assert message is not grpc.aio.EOF, "the control plane ended the stream"
                if message.command.WhichOneof("action") != "snapshot":
                    return message.command
                await self.answer(message.command, snapshot=runner_pb2.SandboxList())

    async def answer(self, command: runner_pb2.Command, **result: Any) -> None:
        """Send a ``CommandResult`` for ``command`` (e.g. ``started=SandboxStarted()``)."""
        reply = runner_pb2.CommandResult(request_id=command.request_id, **result)
        await self._call.write(runner_pb2.RunnerMessage(result=reply))

    async def running(self, sandbox_id: str) -> None:
        event = runner_pb2.SandboxEvent(
            sandbox_id=sandbox_id, phase=runner_pb2.SANDBOX_PHASE_RUNNING
        )
        await self._call.write(runner_pb2.RunnerMessage(event=event))

    def idle(self, *, connection: str | int | None = None, secret: str | None = None) -> Any:
        """Open an idle ``RunnerService.Operate`` call, naming ``connection`` (default: ours)."""
        assert self.registered is not None or connection is not None
        if connection is None:
            assert self.registered is not None
            connection = self.registered.connection_id
        metadata = (
            *bearer(secret if secret is not None else self.secret),
            ("sandboxd-connection", str(connection)),
        )
        return self.stub.Operate(metadata=metadata)

    async def close(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            await asyncio.gather(self._beats, return_exceptions=True)
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


async def status_of(call: Any) -> grpc.StatusCode:
    """How a runner stream ended (reading until the end)."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return await call.code()  # type: ignore[no-any-return]


def exec_exit(code: int = 0) -> runner_pb2.OperationUp:
    exit_frame = streaming_pb2.ExecStreamExit(exit_code=code)
    return runner_pb2.OperationUp(exec=streaming_pb2.ExecStreamResponse(exit=exit_frame))
