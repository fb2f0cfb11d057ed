"""Raw gRPC calls of the ``coreweave.sandbox.v1`` API, for tests that bypass every client.

Why raw: bad-input and tenancy tests must send what no client would (malformed fields,
another organization's ids) and read the status, ErrorInfo and BadRequest the server
answers, exactly as they are on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.v1 import discovery_pb2, sandbox_pb2, volume_pb2

SANDBOXES = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"]
DISCOVERY = discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"]
VOLUMES = volume_pb2.DESCRIPTOR.services_by_name["VolumeService"]
MISSING = "sb-0123456789a00000000"  # shaped like a real id; never issued
SLEEP = ["/bin/sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait']


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> Any:
    """Call any kind of method with one request; the decoded response (a list if streamed)."""
    output = message_factory.GetMessageClass(method.output_type)
    kinds = (method.client_streaming, method.server_streaming)
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[kinds]
    rpc = factory(
        path_of(method),
        request_serializer=type(request).SerializeToString,
        response_deserializer=output.FromString,
    )
    if method.client_streaming:
        return list(rpc(iter([request]), timeout=30))
    if method.server_streaming:
        return list(rpc(request, timeout=30))
    return rpc(request, timeout=30)


def attempt(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> Any:
    """The call's error, or its response."""
    try:
        return call(channel, method, request)
    except grpc.RpcError as error:
        return error


def rpc(channel: grpc.Channel, name: str, request: Message) -> Any:
    """Call a SandboxService, DiscoveryService or VolumeService method by name."""
    service = next(s for s in (SANDBOXES, DISCOVERY, VOLUMES) if name in s.methods_by_name)
    return call(channel, service.methods_by_name[name], request)


def details(error: grpc.RpcError) -> tuple[str, dict[str, str], list[str]]:
    """(ErrorInfo reason, its metadata, BadRequest field names) of an error."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    raw = trailers.get("grpc-status-details-bin")
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    if raw is not None:
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
    return info.reason, dict(info.metadata), fields


def answer(error: Any, sandbox_id: str) -> tuple[Any, ...]:
    """What a caller learns from an error, with the id replaced (it is the caller's input)."""
    assert isinstance(error, grpc.RpcError), f"the call succeeded: {error!r}"
    reason, metadata, fields = details(error)
    redact = lambda text: text.replace(sandbox_id, "<id>")  # noqa: E731
    return (
        error.code(),  # type: ignore[attr-defined]
        redact(error.details() or ""),  # type: ignore[attr-defined]
        reason,
        {key: redact(value) for key, value in metadata.items()},
        fields,
    )


def create_request(**spec: Any) -> sandbox_pb2.CreateSandboxRequest:
    """A valid create of one long-sleeping container, with ``spec`` fields replaced."""
    container = sandbox_pb2.Container(
        name="main", image="python:3.11", command=SLEEP[0], args=SLEEP[1:]
    )
    fields: dict[str, Any] = {"containers": [container], **spec}
    return sandbox_pb2.CreateSandboxRequest(
        sandbox=sandbox_pb2.Sandbox(spec=sandbox_pb2.SandboxSpec(**fields))
    )


def wait_state(channel: grpc.Channel, sandbox_id: str, states: Iterable[int]) -> int:
    """Poll GetSandbox until the state is one of ``states`` (60 s deadline)."""
    wanted = set(states)
    deadline = time.monotonic() + 60
    while True:
        got = rpc(channel, "GetSandbox", sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id))
        if got.status.state in wanted:
            return int(got.status.state)
        assert time.monotonic() < deadline, f"state stayed {got.status.state}"
        time.sleep(0.05)
