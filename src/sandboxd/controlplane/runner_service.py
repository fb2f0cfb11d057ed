"""``sandboxd.runner.v1.RunnerService``: where runners dial in and stay connected.

Why one stream per runner with a separate reader task: the control plane must be able to push
commands to a runner at any time (start, stop, files, open an exec or a log stream) while it
keeps reading the runner's heartbeats. The handler writes from an outbox queue; a reader task
consumes the runner's messages. When the stream ends, for any reason, the runner is marked
disconnected, and discovery reports it unhealthy at once.

Bytes (exec, logs, files) travel on ``Operate`` calls, which the runner opens ahead of need
on the same HTTP/2 connection as its ``Connect`` stream, naming that connection in the
``sandboxd-connection`` metadata; each waits idle in the connection's link until an operation
is bound to it (:mod:`sandboxd.controlplane.operations`).

Who the runner is was settled by the interceptor from the call's metadata before any message
was read (:mod:`sandboxd.controlplane.auth`): its own credential, or on ``Connect`` a join
token. Here the messages must agree with it: a credential registers only its own runner id,
and an ``Operate`` call joins only the pool of that runner's current connection, so only
operations on its own sandboxes are ever bound to it. A join token buys a new
credential for a runner id nobody holds yet (:meth:`IdentityService.join`), so a second
machine holding a valid join token cannot take over a registered runner or its sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.controlplane.auth import header
from sandboxd.controlplane.caller import JoiningRunner, RunnerCaller, current_runner
from sandboxd.controlplane.connection_events import ConnectionEvents
from sandboxd.controlplane.identity_service import IdentityService
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.operations import Operation
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.warm_pools import warm_pool_specs
from sandboxd.errors import (
    ApiError,
    abort_with,
    invalid_argument,
    permission_denied,
    unauthenticated,
)
from sandboxd.identity.model import RUNNER_ID_PATTERN, RUNNER_ID_RULE
from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[runner_pb2.RunnerMessage, runner_pb2.ControlMessage]
CONNECTION_HEADER = "sandboxd-connection"

REGISTER_TIMEOUT_SECONDS = 10.0
DEFAULT_GROUP = "default"


def wrong_runner(credential_runner: str, claimed: str) -> ApiError:
    """A credential used for another runner id than the one it is bound to."""
    return permission_denied(
        f"this runner credential belongs to runner {credential_runner!r}, not {claimed!r}",
        "CWSANDBOX_RUNNER_ID_MISMATCH",
        runner_id=claimed,
    )


class RunnerService(runner_pb2_grpc.RunnerServiceServicer):
    """Accepts runner connections, issues credentials to new runners, tracks heartbeats."""

    def __init__(
        self,
        registry: RunnerRegistry,
        identity: IdentityService,
        heartbeat_interval: float,
        lifecycle: Lifecycle,
        cluster_id: str = "",
        *,
        connections: ConnectionEvents | None = None,
    ) -> None:
        self._cluster_id = cluster_id
        self._connections = connections  # runners' reports of outbound connection attempts
        self._registry = registry
        self._identity = identity
        self._heartbeat_interval = heartbeat_interval
        self._lifecycle = lifecycle

    @staticmethod
    def _check_register(message: runner_pb2.RunnerMessage) -> runner_pb2.Register:
        if message.WhichOneof("message") != "register":
            raise invalid_argument("register", "the first message on Connect must be register")
        register = message.register
        if not RUNNER_ID_PATTERN.match(register.runner_id):
            raise invalid_argument("register.runner_id", RUNNER_ID_RULE)
        if register.runner_group_id and not RUNNER_ID_PATTERN.match(register.runner_group_id):
            raise invalid_argument("register.runner_group_id", RUNNER_ID_RULE)
        return register

    async def _admit(self, register: runner_pb2.Register) -> str:
        """Check the runner may register under its id; returns a new credential, or "".

        Fixes ``register.runner_group_id`` to the group its credential (or join token) names.
        """
        who = current_runner()
        requested = register.runner_group_id or DEFAULT_GROUP
        if isinstance(who, JoiningRunner):
            credential, secret = await self._identity.join(
                who.token, register.runner_id, requested, who.proposed
            )
            register.runner_group_id = credential.runner_group_id or requested
            return secret
        if register.runner_id != who.runner_id:
            raise wrong_runner(who.runner_id, register.runner_id)
        register.runner_group_id = who.runner_group_id or requested
        return ""

    async def Connect(
        self,
        request_iterator: AsyncIterator[runner_pb2.RunnerMessage],
        context: Context,
    ) -> AsyncIterator[runner_pb2.ControlMessage]:
        """Register the runner, then keep its connection until either side goes away."""
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT_SECONDS):
                first = await anext(request_iterator)
            register = self._check_register(first)
            credential = await self._admit(register)
        except (StopAsyncIteration, TimeoutError):
            await abort_with(
                context, invalid_argument("register", "no register message was received")
            )
        except ApiError as error:
            await abort_with(context, error)

        reconcilers = self._lifecycle.reconcilers
        state, connection_id = self._registry.register(register)
        link = state.link
        assert link is not None
        log.info("runner %s connected (group %s)", state.runner_id, state.runner_group_id)
        reader: asyncio.Task[None] | None = None
        try:
            # Everything after register sits inside the try: a runner that leaves during the
            # greeting or while its snapshot is still being applied (a slow store) must read
            # as disconnected at once, not only after the health timeout.
            connected_at = timestamp_pb2.Timestamp()
            connected_at.FromDatetime(state.connected_at)
            yield runner_pb2.ControlMessage(
                registered=runner_pb2.Registered(
                    connected_at=connected_at,
                    heartbeat_interval_ms=int(self._heartbeat_interval * 1000),
                    profile_names=state.profile_names,
                    credential=credential,
                    runner_group_id=state.runner_group_id,
                    cluster_id=self._cluster_id,
                    cpu_overcommit_ratio=state.overcommit.cpu,
                    memory_overcommit_ratio=state.overcommit.memory,
                    warm_pools=warm_pool_specs(state.profiles),
                    connection_id=connection_id,
                    idle_operations=link.idle_limit,
                )
            )
            if register.cluster_id and register.cluster_id != self._cluster_id:
                log.warning(
                    "runner %s last registered with cluster %s, not this one (%s): sandboxes "
                    "it holds that this control plane has no record of are reported as orphans",
                    state.runner_id,
                    register.cluster_id,
                    self._cluster_id,
                )
            await reconcilers.on_register(state.runner_id, register)
            reader = asyncio.create_task(
                self._read(request_iterator, state.runner_id, connection_id, link.outbox)
            )
            # Commands queued by the lifecycle for this runner; None ends the stream.
            while (message := await link.outbox.get()) is not None:
                yield message
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            self._registry.disconnect(state.runner_id, connection_id)
            reconcilers.on_disconnect(state.runner_id)
            log.info("runner %s disconnected", state.runner_id)

    async def _read(
        self,
        request_iterator: AsyncIterator[runner_pb2.RunnerMessage],
        runner_id: str,
        connection_id: int,
        outbox: asyncio.Queue[runner_pb2.ControlMessage | None],
    ) -> None:
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("message")
                if not self._registry.is_current(runner_id, connection_id):
                    log.info("runner %s: connection superseded by a newer one", runner_id)
                    break
                if kind == "heartbeat":
                    heartbeat = message.heartbeat
                    if not self._registry.heartbeat(
                        runner_id,
                        connection_id,
                        heartbeat.resources,
                        images=heartbeat.images if heartbeat.images_listed else None,
                    ):
                        break  # superseded, or back from a silence: the runner redials
                    self._registry.set_warm_pools(runner_id, heartbeat.warm_pools)
                elif kind == "result":
                    state = self._registry.get(runner_id)
                    if state is not None and state.link is not None:
                        state.link.resolve(message.result)
                elif kind == "event":
                    # Never fatal for the connection: a report the database could not take
                    # is picked up again by the reconciler's next snapshot.
                    await self._lifecycle.reconcilers.on_event(runner_id, message.event)
                elif kind == "connections":
                    if self._connections is not None:
                        self._connections.report(runner_id, message.connections)
                else:
                    log.warning("runner %s sent unexpected %s message", runner_id, kind)
        except grpc.aio.AioRpcError as error:
            log.info("runner %s stream ended: %s", runner_id, error.code().name)
        finally:
            outbox.put_nowait(None)

    def _current_link(
        self, runner_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> RunnerLink | None:
        """The link of the connection an ``Operate`` call names, if it is still the current one."""
        text = header(context.invocation_metadata(), CONNECTION_HEADER)
        if (
            text is None
            or not text.isdigit()
            or not self._registry.is_current(runner_id, int(text))
        ):
            return None
        state = self._registry.get(runner_id)
        return state.link if state is not None else None

    async def Operate(  # frames stay encoded (raw_frames.py)
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[runner_pb2.OperationDown | bytes]:
        """A runner's idle operation stream: wait to be bound, then carry that operation.

        Refused unread: a join token (the interceptor admits only credentials here), a
        connection that is not the runner's current one (FAILED_PRECONDITION: it redials on
        its new channel), and more idle streams than the link holds (RESOURCE_EXHAUSTED).
        """
        who = current_runner()
        if not isinstance(who, RunnerCaller):  # the interceptor admits only credentials here
            await abort_with(context, unauthenticated("operation streams need a runner credential"))
        link = self._current_link(who.runner_id, context)
        if link is None:
            await abort_with(
                context,
                ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"runner {who.runner_id!r}: the call does not name its current connection "
                    f"in {CONNECTION_HEADER!r}",
                ),
            )
        stream = link.offer()
        if stream is None:
            await abort_with(
                context,
                ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"runner {who.runner_id!r} already holds {link.idle_limit} idle operation "
                    "streams on this connection",
                ),
            )
        try:
            operation: Operation | None = await stream.bound
        except asyncio.CancelledError:
            link.withdraw(stream)  # the runner ended the call
            if stream.bound.done() and not stream.bound.cancelled() and stream.bound.result():
                stream.bound.result().lost(stream)
            raise
        if operation is None:
            return  # the connection ended first
        async for frame in operation.serve(stream, request_iterator):
            yield frame
