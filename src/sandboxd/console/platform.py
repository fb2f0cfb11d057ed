"""The console's way into the platform: the control plane's own gRPC API on loopback.

Why the gRPC API and not the control plane's objects: every call the console makes presents
the signed-in caller's API key, so the authentication interceptor, the organization scoping
(another organization's sandbox answers NOT_FOUND), the admin-role check and the activity
trail apply exactly as they do to any client. The console holds no privilege of its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from sandboxd_protocol.sandboxd_v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from sandboxd_protocol.v1beta2 import (
    discovery_pb2,
    discovery_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
)

CALL_TIMEOUT_SECONDS = 30.0
PAGE_SIZE = 100
MAX_PAGES = 20  # a console page lists at most 2,000 of anything

# gRPC status → the HTTP status the console answers with.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

SANDBOX_STATUSES = {
    name.removeprefix("SANDBOX_STATUS_").lower(): value
    for name, value in gateway_pb2.SandboxStatus.items()
    if value not in (0, gateway_pb2.SANDBOX_STATUS_TERMINATED)
}


class PlatformError(Exception):
    """A refused or failed platform call, as the console shows it: HTTP status and message."""

    def __init__(self, http_status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.code = code

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> PlatformError:
        """The gRPC status translated once, here (its message already names the field)."""
        status = HTTP_STATUS.get(error.code(), 502)
        return cls(status, error.details() or error.code().name, error.code().name)


def as_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with the .proto field names (enums by name)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass(frozen=True)
class SandboxFilter:
    """What the sandboxes page narrows its list to; empty fields do not narrow."""

    status: str = ""
    tag: str = ""
    profile: str = ""

    def request(self, page_token: str) -> gateway_pb2.ListSandboxesRequest:
        """The ListSandboxes request for one page; an unknown status names the field."""
        request = gateway_pb2.ListSandboxesRequest(
            page_size=PAGE_SIZE, page_token=page_token, include_stopped=True
        )
        if self.status:
            if self.status not in SANDBOX_STATUSES:
                known = ", ".join(sorted(SANDBOX_STATUSES))
                raise PlatformError(400, f"status: unknown status {self.status!r}; one of {known}")
            request.status = SANDBOX_STATUSES[self.status]  # type: ignore[assignment]
        if self.tag:
            request.tags.append(self.tag)
        if self.profile:
            request.profile_names.append(self.profile)
        return request


@dataclass(frozen=True)
class StartSpec:
    """A sandbox to start from the console's form."""

    image: str
    command: str
    args: Sequence[str] = ()
    tags: Sequence[str] = ()
    profile: str = ""


class Platform:
    """Typed calls on the gRPC API, each with the caller's key; errors as PlatformError."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._discovery = discovery_pb2_grpc.DiscoveryServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._streaming = streaming_pb2_grpc.GatewayStreamingServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._events = events_pb2_grpc.EventServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Close the channel (streams still open end)."""
        await self._channel.close(None)

    @staticmethod
    def metadata(api_key: str) -> tuple[tuple[str, str], ...]:
        """The call metadata that presents ``api_key``."""
        return (("authorization", f"Bearer {api_key}"),)

    async def _call(self, method: Any, request: Message, api_key: str) -> Any:
        try:
            return await method(
                request, metadata=self.metadata(api_key), timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            raise PlatformError.from_rpc(error) from None

    async def runners(self, api_key: str) -> list[dict[str, Any]]:
        """Every runner the caller may see, with live capacity, health and cordon state."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(MAX_PAGES):
            request = discovery_pb2.ListAvailableRunnersRequest(
                page_size=PAGE_SIZE, page_token=token, view=discovery_pb2.RUNNER_VIEW_FULL
            )
            reply = await self._call(self._discovery.ListAvailableRunners, request, api_key)
            found.extend(as_dict(runner) for runner in reply.runners)
            token = reply.next_page_token
            if not token:
                break
        return found

    async def profiles(self, api_key: str) -> list[dict[str, Any]]:
        """Each profile with the runner it is bound to (one entry per binding)."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(MAX_PAGES):
            request = discovery_pb2.ListProfilesRequest(page_size=PAGE_SIZE, page_token=token)
            reply = await self._call(self._discovery.ListProfiles, request, api_key)
            found.extend(as_dict(profile) for profile in reply.profiles)
            token = reply.next_page_token
            if not token:
                break
        return found

    async def sandboxes(self, api_key: str, wanted: SandboxFilter) -> list[dict[str, Any]]:
        """The caller's sandboxes (an admin's: all), narrowed by ``wanted``."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(MAX_PAGES):
            reply = await self._call(self._gateway.List, wanted.request(token), api_key)
            found.extend(as_dict(sandbox) for sandbox in reply.sandboxes)
            token = reply.next_page_token
            if not token:
                break
        return found

    async def sandbox(self, api_key: str, sandbox_id: str) -> dict[str, Any]:
        """One sandbox; another organization's answers 404 exactly like a missing one."""
        request = gateway_pb2.GetSandboxRequest(sandbox_id=sandbox_id)
        return as_dict(await self._call(self._gateway.Get, request, api_key))

    async def start(self, api_key: str, spec: StartSpec) -> dict[str, Any]:
        """Start a sandbox; the API checks the spec (errors name the field)."""
        request = gateway_pb2.StartSandboxRequest(
            container_image=spec.image,
            command=spec.command,
            args=list(spec.args),
            tags=list(spec.tags),
            profile_names=[spec.profile] if spec.profile else [],
        )
        return as_dict(await self._call(self._gateway.Start, request, api_key))

    async def stop(self, api_key: str, sandbox_id: str) -> dict[str, Any]:
        """Stop a sandbox (SIGTERM, then SIGKILL after a short grace)."""
        request = gateway_pb2.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=2)
        return as_dict(await self._call(self._gateway.Stop, request, api_key))

    async def events(self, api_key: str, sandbox_id: str, after_seq: int) -> list[dict[str, Any]]:
        """The sandbox's activity trail after ``after_seq`` (at most what one read returns)."""
        request = events_pb2.ListEventsRequest(sandbox_id=sandbox_id, after_seq=after_seq)
        found: list[dict[str, Any]] = []
        try:
            stream = self._events.ListEvents(
                request, metadata=self.metadata(api_key), timeout=CALL_TIMEOUT_SECONDS
            )
            async for event in stream:
                item = as_dict(event)
                item["data"] = _json_or_text(event.data_json)
                found.append(item)
        except grpc.aio.AioRpcError as error:
            raise PlatformError.from_rpc(error) from None
        return found

    async def runner_action(
        self, api_key: str, runner_id: str, action: str, deadline_seconds: int = 0
    ) -> dict[str, Any]:
        """Cordon, uncordon or drain a runner (the API refuses a key that is not admin)."""
        method: Any
        request: Message
        if action == "cordon":
            method, request = self._admin.CordonRunner, admin_pb2.CordonRunnerRequest()
        elif action == "uncordon":
            method, request = self._admin.UncordonRunner, admin_pb2.UncordonRunnerRequest()
        elif action == "drain":
            method = self._admin.DrainRunner
            request = admin_pb2.DrainRunnerRequest(deadline_seconds=deadline_seconds)
        else:
            raise PlatformError(400, f"action: unknown runner action {action!r}")
        request.runner_id = runner_id
        return as_dict(await self._call(method, request, api_key))

    async def logs(self, api_key: str, sandbox_id: str) -> grpc.aio.StreamStreamCall[Any, Any]:
        """A followed StreamLogs call (the recent tail first, then new lines as they come).

        The request side stays open: a half-close would tell the server the reader is done.
        """
        call: grpc.aio.StreamStreamCall[Any, Any] = self._streaming.StreamLogs(
            metadata=self.metadata(api_key)
        )
        init = streaming_pb2.LogStreamInit(sandbox_id=sandbox_id, follow=True, tail_lines=500)
        await call.write(streaming_pb2.LogStreamRequest(init=init))
        return call

    def exec_stream(self, api_key: str) -> grpc.aio.StreamStreamCall[Any, Any]:
        """A StreamExec call the caller writes its init, stdin and resizes into."""
        call: grpc.aio.StreamStreamCall[Any, Any] = self._streaming.StreamExec(
            metadata=self.metadata(api_key)
        )
        return call


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text
