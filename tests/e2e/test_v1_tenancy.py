"""Organizations through the v1 API: another organization's sandbox looks exactly missing.

Two organizations each run a sandbox. Every ``coreweave.sandbox.v1.SandboxService`` RPC that
names a sandbox is called by one member on the other organization's sandbox and on an id
that never existed: the answers must be identical (code, message, ErrorInfo reason and
metadata, field violations, with the id itself set aside), and the sandbox untouched
afterwards. RPCs are found from the service descriptor, so one added later is covered.
Runners are listed with the caller's organization, and asking for them under another
organization's id answers like an unknown runner. The official 1.22.0 client sees the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1 import discovery_pb2 as d
from sandboxd_protocol.v1 import sandbox_pb2 as v
from tests.e2e.conftest import Platform, run_python
from tests.support.official import OFFICIAL_V1_VERSION, official_python
from tests.support.processes import admin_call, keyed_channel
from tests.support.v1_calls import (
    DISCOVERY,
    MISSING,
    SANDBOXES,
    answer,
    attempt,
    create_request,
    rpc,
    wait_state,
)


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


def start(channel: grpc.Channel) -> str:
    sandbox_id = str(rpc(channel, "CreateSandbox", create_request()).sandbox_id)
    wait_state(channel, sandbox_id, [v.STATE_RUNNING])
    return sandbox_id


@pytest.fixture(scope="module")
def orgs(quiet_platform: Platform) -> Iterator[Orgs]:
    key_a, key_b = create_key(quiet_platform, "v1-a"), create_key(quiet_platform, "v1-b")
    with (
        keyed_channel(quiet_platform.target, key_a) as a,
        keyed_channel(quiet_platform.target, key_b) as b,
    ):
        found = Orgs(quiet_platform, key_a, key_b, start(a), start(b))
    yield found
    with keyed_channel(quiet_platform.target, quiet_platform.api_key) as admin:
        for sandbox_id in (found.sandbox_a, found.sandbox_b):
            request = v.DeleteSandboxRequest(sandbox_id=sandbox_id, grace_period_seconds=0)
            rpc(admin, "DeleteSandbox", request)


def names_a_sandbox(method: MethodDescriptor) -> bool:
    request = method.input_type
    init = request.fields_by_name.get("init")
    return "sandbox_id" in request.fields_by_name or (
        init is not None and "sandbox_id" in init.message_type.fields_by_name
    )


def request_for(method: MethodDescriptor, sandbox_id: str) -> Any:
    """A well-formed request naming ``sandbox_id`` (so only the sandbox can make it fail)."""
    cls = getattr(v, method.input_type.name)
    if cls is v.ExecStreamRequest:
        return cls(init=v.ExecStreamInit(sandbox_id=sandbox_id, command=["id"]))
    fields: dict[str, Any] = {"sandbox_id": sandbox_id}
    known = cls.DESCRIPTOR.fields_by_name
    if "path" in known:
        fields["path"] = "/tmp/probe"
    if "content" in known:
        fields["content"] = b"probe"
    if "command" in known:
        fields["command"] = ["id"]
    if "csr_der" in known:
        fields["csr_der"] = b"csr"
    return cls(**fields)


def test_every_rpc_naming_a_sandbox_answers_another_orgs_sandbox_like_a_missing_one(
    orgs: Orgs,
) -> None:
    checked = []
    with orgs.channel(orgs.key_b) as b:
        for method in SANDBOXES.methods:
            if not names_a_sandbox(method):
                continue
            theirs = attempt(b, method, request_for(method, orgs.sandbox_a))
            missing = attempt(b, method, request_for(method, MISSING))
            assert answer(theirs, orgs.sandbox_a) == answer(missing, MISSING), method.name
            checked.append(method.name)
            code = answer(missing, MISSING)[0]
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED), method.name
            if code is grpc.StatusCode.NOT_FOUND:
                assert answer(theirs, orgs.sandbox_a)[2] == "CWSANDBOX_SANDBOX_NOT_FOUND"
        # allow_missing: both look "already gone", neither is an error.
        for sandbox_id in (orgs.sandbox_a, MISSING):
            request = v.DeleteSandboxRequest(sandbox_id=sandbox_id, allow_missing=True)
            assert rpc(b, "DeleteSandbox", request) == v.DeleteSandboxResponse()
        listed = rpc(b, "ListSandboxes", v.ListSandboxesRequest(show_terminated=True))
        assert [s.sandbox_id for s in listed.sandboxes] == [orgs.sandbox_b]
    wanted = {"GetSandbox", "DeleteSandbox", "WriteFile", "ReadFile", "StreamExec", "StreamLogs"}
    assert wanted <= set(checked), checked
    # DeleteSandbox and WriteFile by the other organization changed nothing.
    with orgs.channel(orgs.key_a) as a:
        assert wait_state(a, orgs.sandbox_a, [v.STATE_RUNNING]) == v.STATE_RUNNING
        read = v.ReadFileRequest(sandbox_id=orgs.sandbox_a, path="/tmp/probe")
        assert answer(attempt(a, SANDBOXES.methods_by_name["ReadFile"], read), "")[2] == (
            "CWSANDBOX_FILE_NOT_FOUND"
        )


def test_runners_carry_the_callers_organization(orgs: Orgs) -> None:
    with orgs.channel(orgs.key_b) as b:
        runners = rpc(b, "ListAvailableRunners", d.ListAvailableRunnersRequest()).runners
        assert {r.organization_id for r in runners} == {"v1-b"}
        runner_id = runners[0].runner_id
        mine = d.GetAvailableRunnerRequest(runner_id=runner_id, organization_id="v1-b")
        assert rpc(b, "GetAvailableRunner", mine).resources.available_cpu_millicores > 0
        method = DISCOVERY.methods_by_name["GetAvailableRunner"]
        theirs = d.GetAvailableRunnerRequest(runner_id=runner_id, organization_id="v1-a")
        unknown = d.GetAvailableRunnerRequest(runner_id="no-such-runner", organization_id="v1-b")
        assert answer(attempt(b, method, theirs), runner_id) == answer(
            attempt(b, method, unknown), "no-such-runner"
        )


OFFICIAL = r"""
import json, cwsandbox
from cwsandbox import Sandbox
theirs = THEIRS
out = {"listed": sorted(s.sandbox_id for s in Sandbox.list().result())}
for name, call in [
    ("from_id", lambda: Sandbox.from_id(theirs).result()),
    ("delete", lambda: Sandbox.delete(theirs).result()),
]:
    try:
        call()
        out[name] = "succeeded"
    except cwsandbox.SandboxNotFoundError:
        out[name] = "SandboxNotFoundError"
print(json.dumps(out))
"""


def test_the_official_v1_client_sees_only_its_organization(orgs: Orgs) -> None:
    python = official_python(OFFICIAL_V1_VERSION)
    source = OFFICIAL.replace("THEIRS", repr(orgs.sandbox_a))
    got = json.loads(run_python(python, source, orgs.platform.env(CWSANDBOX_API_KEY=orgs.key_b)))
    assert got == {
        "listed": [orgs.sandbox_b],
        "from_id": "SandboxNotFoundError",
        "delete": "SandboxNotFoundError",
    }
    with orgs.channel(orgs.key_a) as a:
        assert wait_state(a, orgs.sandbox_a, [v.STATE_RUNNING]) == v.STATE_RUNNING


def test_the_official_client_lists_runners_under_its_organization(orgs: Orgs) -> None:
    python = official_python(OFFICIAL_V1_VERSION)
    script = (
        "import json, cwsandbox\n"
        "r = cwsandbox.list_runners()[0]\n"
        "print(json.dumps([r.organization_id, "
        "cwsandbox.get_runner(r.runner_id, organization_id=r.organization_id).runner_id]))\n"
    )
    got = json.loads(run_python(python, script, orgs.platform.env(CWSANDBOX_API_KEY=orgs.key_a)))
    assert got == ["v1-a", orgs.platform.runner_id]


def test_every_v1_rpc_needs_an_api_key(orgs: Orgs) -> None:
    with keyed_channel(orgs.platform.target, None) as anonymous:
        for service in (SANDBOXES, DISCOVERY):
            for method in service.methods:
                request = getattr(v if service is SANDBOXES else d, method.input_type.name)()
                error = attempt(anonymous, method, request)
                assert answer(error, "")[0] is grpc.StatusCode.UNAUTHENTICATED, method.name
