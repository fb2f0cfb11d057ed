"""Organizations on a real ``sandboxd up``: members see and touch only their own sandboxes.

Two organizations each run a sandbox. Every RPC of GatewayService and GatewayStreamingService
that names a sandbox is called by one member on the other organization's sandbox and on an id
that never existed: the answers must be identical (code, message, ErrorInfo reason and
metadata, with the id itself set aside), so a member cannot even learn that the sandbox
exists, and it must be untouched afterwards. The RPCs are found from the service descriptors,
so an RPC added later is covered without editing this test. Admins see everything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2

from cwsandbox import Sandbox, SandboxNotFoundError
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.e2e.conftest import Platform, run_python
from tests.support.processes import admin_call, keyed_channel

GATEWAY = g.DESCRIPTOR.services_by_name["GatewayService"]
STREAMING = st.DESCRIPTOR.services_by_name["GatewayStreamingService"]
MISSING = "sb-0123456789a00000000"  # shaped like a real id; never issued
SLEEP = ["/bin/sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait']


@dataclass
class Orgs:
    platform: Platform
    key_a: str
    key_b: str
    sandbox_a: str
    sandbox_b: str

    def channel(self, key: str) -> grpc.Channel:
        return keyed_channel(self.platform.target, key)


def create_key(platform: Platform, organization: str) -> str:
    response = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    )
    return str(response.secret)


def unary(channel: grpc.Channel, method: MethodDescriptor, request: Any) -> Any:
    rpc = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=lambda raw: raw,
    )
    return rpc(request, timeout=30)


def start(channel: grpc.Channel) -> str:
    request = g.StartSandboxRequest(command=SLEEP[0], args=SLEEP[1:], profile_names=["locked-down"])
    sandbox_id = g.StartSandboxResponse.FromString(
        unary(channel, GATEWAY.methods_by_name["Start"], request)
    ).sandbox_id
    deadline = time.monotonic() + 60
    while status(channel, sandbox_id) != g.SANDBOX_STATUS_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return sandbox_id


def status(channel: grpc.Channel, sandbox_id: str) -> int:
    raw = unary(channel, GATEWAY.methods_by_name["Get"], g.GetSandboxRequest(sandbox_id=sandbox_id))
    return g.GetSandboxResponse.FromString(raw).sandbox_status


@pytest.fixture(scope="module")
def orgs(quiet_platform: Platform) -> Iterator[Orgs]:
    key_a, key_b = create_key(quiet_platform, "team-a"), create_key(quiet_platform, "team-b")
    with (
        keyed_channel(quiet_platform.target, key_a) as a,
        keyed_channel(quiet_platform.target, key_b) as b,
    ):
        found = Orgs(quiet_platform, key_a, key_b, start(a), start(b))
    yield found
    with keyed_channel(quiet_platform.target, quiet_platform.api_key) as admin:
        for sandbox_id in (found.sandbox_a, found.sandbox_b):
            unary(
                admin,
                GATEWAY.methods_by_name["Delete"],
                g.DeleteSandboxRequest(sandbox_id=sandbox_id),
            )


def naming_a_sandbox(method: MethodDescriptor) -> str | None:
    """The path of the sandbox id field in the method's (first) request, if it has one."""
    request = method.input_type
    if "sandbox_id" in request.fields_by_name:
        return "sandbox_id"
    init = request.fields_by_name.get("init")
    if init is not None and "sandbox_id" in init.message_type.fields_by_name:
        return "init.sandbox_id"
    return None


def request_for(method: MethodDescriptor, sandbox_id: str) -> Any:
    """A well-formed request naming ``sandbox_id`` (so only the sandbox can make it fail)."""
    name = method.input_type.name
    if name == "ExecStreamRequest":
        return st.ExecStreamRequest(init=st.ExecStreamInit(sandbox_id=sandbox_id, command=["id"]))
    if name == "LogStreamRequest":
        return st.LogStreamRequest(init=st.LogStreamInit(sandbox_id=sandbox_id))
    cls = getattr(g, name)
    fields: dict[str, Any] = {"sandbox_id": sandbox_id}
    known = cls.DESCRIPTOR.fields_by_name
    if "filepath" in known:
        fields["filepath"] = "/tmp/probe"
    if "file_contents" in known:
        fields["file_contents"] = b"probe"
    if name == "ExecSandboxRequest":
        fields["command"] = ["id"]
    return cls(**fields)


def call(channel: grpc.Channel, method: MethodDescriptor, request: Any) -> grpc.RpcError | None:
    """Make the call; its error, or None if it succeeded."""
    try:
        if method.client_streaming:
            rpc = channel.stream_stream(
                f"/{method.containing_service.full_name}/{method.name}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=lambda raw: raw,
            )
            list(rpc(iter([request]), timeout=30))
        else:
            unary(channel, method, request)
    except grpc.RpcError as error:
        return error
    return None


def answer(error: grpc.RpcError | None, sandbox_id: str) -> tuple[Any, ...]:
    """What a caller learns from an error, with the id replaced (it is the caller's input)."""
    assert error is not None, "the call succeeded"
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    info = error_details_pb2.ErrorInfo()
    raw = trailers.get("grpc-status-details-bin")
    if raw is not None:
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
    redact = lambda text: text.replace(sandbox_id, "<id>")  # noqa: E731
    return (
        error.code(),  # type: ignore[attr-defined]
        redact(error.details() or ""),  # type: ignore[attr-defined]
        info.reason,
        info.domain,
        {key: redact(value) for key, value in info.metadata.items()},
    )


def test_every_rpc_naming_a_sandbox_answers_another_orgs_sandbox_like_a_missing_one(
    orgs: Orgs,
) -> None:
    checked = []
    with orgs.channel(orgs.key_b) as b:
        for service in (GATEWAY, STREAMING):
            for method in service.methods:
                if naming_a_sandbox(method) is None:
                    continue
                theirs = call(b, method, request_for(method, orgs.sandbox_a))
                missing = call(b, method, request_for(method, MISSING))
                assert answer(theirs, orgs.sandbox_a) == answer(missing, MISSING), method.name
                checked.append(method.name)
                code = answer(missing, MISSING)[0]
                assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
                if code is grpc.StatusCode.NOT_FOUND:
                    assert answer(theirs, orgs.sandbox_a)[2] == "CWSANDBOX_SANDBOX_NOT_FOUND"
    wanted = {"Get", "Stop", "Delete", "AddFile", "RetrieveFile", "StreamExec", "StreamLogs"}
    wanted |= {"Exec", "Pause", "Resume"}
    assert wanted <= set(checked), checked
    # Stop and Delete by the other organization changed nothing; the owner still works in it.
    with orgs.channel(orgs.key_a) as a:
        assert status(a, orgs.sandbox_a) == g.SANDBOX_STATUS_RUNNING
        write = GATEWAY.methods_by_name["AddFile"]
        assert call(a, write, request_for(write, orgs.sandbox_a)) is None
        read = GATEWAY.methods_by_name["RetrieveFile"]
        contents = g.RetrieveFileSandboxResponse.FromString(
            unary(a, read, request_for(read, orgs.sandbox_a))
        ).file_contents
        assert contents == b"probe"


def test_members_list_only_their_organization_and_admins_list_all(orgs: Orgs) -> None:
    def listed(key: str) -> set[str]:
        with orgs.channel(key) as channel:
            raw = unary(channel, GATEWAY.methods_by_name["List"], g.ListSandboxesRequest())
        return {s.sandbox_id for s in g.ListSandboxesResponse.FromString(raw).sandboxes}

    assert listed(orgs.key_a) == {orgs.sandbox_a}
    assert listed(orgs.key_b) == {orgs.sandbox_b}
    assert {orgs.sandbox_a, orgs.sandbox_b} <= listed(orgs.platform.api_key)


def test_our_client_as_owner_admin_and_stranger(
    orgs: Orgs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", orgs.platform.base_url)
    for key in (orgs.key_a, orgs.platform.api_key):  # the owner, and an administrator
        monkeypatch.setenv("CWSANDBOX_API_KEY", key)
        sandbox = Sandbox.from_id(orgs.sandbox_a).result()
        assert sandbox.exec(["echo", "in a"]).result().stdout == "in a\n"
        sandbox.write_file("/tmp/from-client", b"x").result()
        assert sandbox.read_file("/tmp/from-client").result() == b"x"
    monkeypatch.setenv("CWSANDBOX_API_KEY", orgs.key_b)
    with pytest.raises(SandboxNotFoundError):
        Sandbox.from_id(orgs.sandbox_a).result()
    assert [s.sandbox_id for s in Sandbox.list().result()] == [orgs.sandbox_b]


OFFICIAL = r"""
import json, sys, cwsandbox
from cwsandbox import Sandbox
theirs = sys.argv[1]
out = {"listed": sorted(s.sandbox_id for s in Sandbox.list().result())}
try:
    Sandbox.from_id(theirs).result()
    out["from_id"] = "found"
except cwsandbox.SandboxNotFoundError:
    out["from_id"] = "SandboxNotFoundError"
try:
    Sandbox.delete(theirs).result()
    out["delete"] = "deleted"
except cwsandbox.SandboxNotFoundError:
    out["delete"] = "SandboxNotFoundError"
print(json.dumps(out))
"""


def test_the_official_client_sees_only_its_organization(orgs: Orgs, official: Path) -> None:
    script = orgs.platform.env(CWSANDBOX_API_KEY=orgs.key_b)
    source = OFFICIAL.replace("sys.argv[1]", repr(orgs.sandbox_a))
    got = json.loads(run_python(official, source, script))
    assert got == {
        "listed": [orgs.sandbox_b],
        "from_id": "SandboxNotFoundError",
        "delete": "SandboxNotFoundError",
    }
    with orgs.channel(orgs.key_a) as a:
        assert status(a, orgs.sandbox_a) == g.SANDBOX_STATUS_RUNNING


def test_a_revoked_member_key_loses_access_at_once(orgs: Orgs) -> None:
    key = create_key(orgs.platform, "team-a")
    with orgs.channel(key) as channel:
        assert status(channel, orgs.sandbox_a) == g.SANDBOX_STATUS_RUNNING
        admin_call(
            orgs.platform.target,
            orgs.platform.api_key,
            "RevokeApiKey",
            admin_pb2.RevokeApiKeyRequest(key_id=key.split("_")[1]),
            admin_pb2.RevokeApiKeyResponse,
        )
        with pytest.raises(grpc.RpcError) as caught:
            status(channel, orgs.sandbox_a)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
