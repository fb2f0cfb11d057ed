"""Malformed v1 requests through raw gRPC: each is refused naming its field, nothing is lost.

Every case is sent as no client would send it; the answer must be INVALID_ARGUMENT with a
``google.rpc.BadRequest`` field violation naming the field in v1 terms (or UNIMPLEMENTED
with ``CWSANDBOX_NOT_IMPLEMENTED`` naming a field of a feature not offered), and the
organization's sandboxes must be exactly what they were before. Creates are idempotent on
``request_id``; ConnectSandbox answers the fallback code the client expects (v1.md §11).
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sandboxd_protocol.v1 import discovery_pb2 as d
from sandboxd_protocol.v1 import sandbox_pb2 as v
from tests.e2e.conftest import Platform
from tests.support.processes import keyed_channel
from tests.support.v1_calls import (
    MISSING,
    SANDBOXES,
    attempt,
    create_request,
    details,
    path_of,
    rpc,
    wait_state,
)

Mutation = Callable[[v.CreateSandboxRequest], None]


def _container(request: v.CreateSandboxRequest) -> v.Container:
    return request.sandbox.spec.containers[0]


def _set(path: str, value: Any) -> Mutation:
    def mutate(request: v.CreateSandboxRequest) -> None:
        *parents, name = path.split(".")
        target: Any = request.sandbox.spec
        for part in parents:
            target = _container(request) if part == "container" else getattr(target, part)
        setattr(target, name, value)

    return mutate


def _add_egress(**rule: Any) -> Mutation:
    return lambda r: r.sandbox.spec.network.egress.append(v.EgressRule(**rule))


def _add_service(**service: Any) -> Mutation:
    return lambda r: r.sandbox.spec.services.append(v.Service(**service))


def _second_container(request: v.CreateSandboxRequest) -> None:
    request.sandbox.spec.containers.append(v.Container(name="b", image="python:3.11"))


def _no_containers(request: v.CreateSandboxRequest) -> None:
    del request.sandbox.spec.containers[:]


def _limit(**resources: Any) -> Mutation:
    def mutate(request: v.CreateSandboxRequest) -> None:
        _container(request).resource_requirements.limits.CopyFrom(v.Resources(**resources))

    return mutate


def _requests_over_limits(request: v.CreateSandboxRequest) -> None:
    needs = _container(request).resource_requirements
    needs.limits.cpu, needs.requests.cpu = "500m", "2"


def _env(name: str) -> Mutation:
    return lambda r: _container(r).environment_variables.__setitem__(name, "x")


def _file(path: str) -> Mutation:
    return lambda r: _container(r).files.append(v.FileMount(path=path, content=b"x"))


INVALID: dict[str, tuple[Mutation, str]] = {
    "two containers": (_second_container, "spec.containers"),
    "no container": (_no_containers, "spec.containers"),
    "empty command": (_set("container.command", ""), "spec.containers[0].command"),
    "NUL in image": (_set("container.image", "python\x00:3.11"), "spec.containers[0].image"),
    "cpu not a quantity": (
        _limit(cpu="lots"),
        "spec.containers[0].resource_requirements.limits.cpu",
    ),
    "zero memory": (_limit(memory="0"), "spec.containers[0].resource_requirements.limits.memory"),
    "requests over limits": (
        _requests_over_limits,
        "spec.containers[0].resource_requirements.requests.cpu",
    ),
    "gpu by memory": (
        _limit(gpu=v.Gpu(count=1, memory_gb=80)),
        "spec.containers[0].resource_requirements.limits.gpu.memory_gb",
    ),
    "env name with =": (_env("A=B"), "spec.containers[0].environment_variables"),
    "relative file": (_file("etc/x"), "spec.containers[0].files[0].path"),
    "file over /proc": (_file("/proc/self/x"), "spec.containers[0].files[0].path"),
    "empty tag": (lambda r: r.sandbox.spec.tags.append(" "), "spec.tags"),
    "negative lifetime": (_set("max_lifetime_seconds", -1), "spec.max_lifetime_seconds"),
    "unknown mode": (_set("mode", 7), "spec.mode"),
    "tenant egress": (
        _add_egress(tenant=v.TENANT_SCOPE_SAME_ORG),
        "spec.network.egress[0].tenant",
    ),
    "hostname egress": (
        _add_egress(https_hostname="example.com"),
        "spec.network.egress[0].https_hostname",
    ),
    "selector egress": (
        _add_egress(selector=v.SelectorBlock(pod_labels={"a": "b"})),
        "spec.network.egress[0].selector",
    ),
    "egress with ports": (
        _add_egress(any=True, ports=[v.PortRange(port=443)]),
        "spec.network.egress[0].ports",
    ),
    "cidr with except": (
        _add_egress(cidr=v.CidrBlock(cidr="10.0.0.0/8", **{"except": ["10.1.0.0/16"]})),
        "spec.network.egress[0].cidr.except",
    ),
    "not a cidr": (
        _add_egress(cidr=v.CidrBlock(cidr="10.0.0.300/8")),
        "spec.network.egress[0].cidr.cidr",
    ),
    "rule without destination": (_add_egress(), "spec.network.egress[0]"),
    "deny with rules": (
        lambda r: (
            setattr(r.sandbox.spec.network, "deny_egress", True),
            r.sandbox.spec.network.egress.append(v.EgressRule(any=True)),
        ),
        "spec.network.deny_egress",
    ),
    "ingress rule": (
        lambda r: r.sandbox.spec.network.ingress.append(v.IngressRule(any=True)),
        "spec.network.ingress[0]",
    ),
    "udp service": (
        _add_service(port=53, protocol=v.SERVICE_PROTOCOL_UDP),
        "spec.services[0].protocol",
    ),
    "port 0 service": (_add_service(port=0), "spec.services[0].port"),
    "https endpoint": (
        _add_service(port=80, endpoint=v.EndpointSpec(kind=v.ENDPOINT_KIND_HTTPS)),
        "spec.services[0].endpoint",
    ),
    "custom visibility": (
        _add_service(port=80, visibility=v.VISIBILITY_CUSTOM),
        "spec.services[0].visibility",
    ),
    "no sandbox": (lambda r: r.ClearField("sandbox"), "sandbox"),
    "unmounted scratch volume": (
        lambda r: r.sandbox.spec.volumes.append(v.SandboxVolume(name="w", scratch={})),
        "spec.volumes[0]",
    ),
    "long request id": (lambda r: setattr(r, "request_id", "x" * 200), "request_id"),
    "secret store naming no secret": (
        lambda r: _container(r).secret_stores.append(v.SecretStoreReference(store_name="s")),
        "spec.containers[0].secret_stores[0].secrets",
    ),
    "secret store with a bad name": (
        lambda r: _container(r).secret_stores.append(
            v.SecretStoreReference(store_name="../s", secrets=[v.SecretMapping(path="A")])
        ),
        "spec.containers[0].secret_stores[0].store_name",
    ),
    "unmounted registered volume": (
        lambda r: r.sandbox.spec.volumes.append(v.SandboxVolume(name="w", volume_id="vol-1")),
        "spec.volumes[0]",
    ),
}

UNOFFERED: dict[str, tuple[Mutation, str]] = {
    "working dir": (_set("container.working_dir", "/work"), "spec.containers[0].working_dir"),
    "runtime class": (_set("runtime_class", "gvisor"), "spec.runtime_class"),
}


@pytest.fixture(scope="module")
def channel(quiet_platform: Platform) -> Iterator[grpc.Channel]:
    with keyed_channel(quiet_platform.target, quiet_platform.api_key) as opened:
        yield opened


def everything(channel: grpc.Channel) -> list[tuple[str, int]]:
    listed = rpc(channel, "ListSandboxes", v.ListSandboxesRequest(show_terminated=True))
    return sorted((s.sandbox_id, s.status.state) for s in listed.sandboxes)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_malformed_create_names_the_field(channel: grpc.Channel, case: str) -> None:
    before = everything(channel)
    mutate, field = INVALID[case]
    request = create_request()
    mutate(request)
    error = attempt(channel, SANDBOXES.methods_by_name["CreateSandbox"], request)
    assert isinstance(error, grpc.RpcError), f"{case} was accepted"
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    _, metadata, fields = details(error)
    assert fields == [field], error.details()
    assert metadata["field"] == field
    assert field in error.details()
    assert everything(channel) == before


@pytest.mark.parametrize("case", sorted(UNOFFERED))
def test_unoffered_features_say_so_naming_the_field(channel: grpc.Channel, case: str) -> None:
    before = everything(channel)
    mutate, field = UNOFFERED[case]
    request = create_request()
    mutate(request)
    error = attempt(channel, SANDBOXES.methods_by_name["CreateSandbox"], request)
    assert isinstance(error, grpc.RpcError), f"{case} was accepted"
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    reason, metadata, _ = details(error)
    assert (reason, metadata["field"]) == ("CWSANDBOX_NOT_IMPLEMENTED", field)
    assert everything(channel) == before


OTHER_RPCS: dict[str, tuple[str, Any, str]] = {
    "list state": ("ListSandboxes", v.ListSandboxesRequest(state=42), "state"),
    "list token": ("ListSandboxes", v.ListSandboxesRequest(page_token="garbage"), "page_token"),
    "negative grace": (
        "DeleteSandbox",
        v.DeleteSandboxRequest(sandbox_id=MISSING, grace_period_seconds=-1),
        "grace_period_seconds",
    ),
    "empty id": ("GetSandbox", v.GetSandboxRequest(sandbox_id=" "), "sandbox_id"),
    "relative write": (
        "WriteFile",
        v.WriteFileRequest(sandbox_id="SELF", path="tmp/x", content=b"x"),
        "path",
    ),
    "NUL read": ("ReadFile", v.ReadFileRequest(sandbox_id="SELF", path="/tmp/\x00"), "path"),
    "other container": (
        "ReadFile",
        v.ReadFileRequest(sandbox_id="SELF", path="/etc/hostname", container="sidecar"),
        "container",
    ),
    "exec without init": (
        "StreamExec",
        v.ExecStreamRequest(stdin=b"x"),
        "init",
    ),
    "exec without command": (
        "StreamExec",
        v.ExecStreamRequest(init=v.ExecStreamInit(sandbox_id="SELF")),
        "init.command",
    ),
    "exec other container": (
        "StreamExec",
        v.ExecStreamRequest(
            init=v.ExecStreamInit(sandbox_id="SELF", command=["id"], container="sidecar")
        ),
        "init.container",
    ),
    "negative tail": (
        "StreamLogs",
        v.StreamLogsRequest(sandbox_id="SELF", tail_lines=-1),
        "tail_lines",
    ),
    "runner without org": (
        "GetAvailableRunner",
        d.GetAvailableRunnerRequest(runner_id="runner-abc-123"),
        "organization_id",
    ),
    "unknown view": ("ListAvailableRunners", d.ListAvailableRunnersRequest(view=9), "view"),
    "unknown visibility": (
        "ListAvailableRunners",
        d.ListAvailableRunnersRequest(service_visibility=9),
        "service_visibility",
    ),
}


def test_malformed_requests_of_other_rpcs_name_the_field(channel: grpc.Channel) -> None:
    created = rpc(channel, "CreateSandbox", create_request())
    wait_state(channel, created.sandbox_id, [v.STATE_RUNNING])
    for case, (name, request, field) in OTHER_RPCS.items():
        for message in (request, getattr(request, "init", None)):
            if message is not None and getattr(message, "sandbox_id", "") == "SELF":
                message.sandbox_id = created.sandbox_id
        service = SANDBOXES if name in SANDBOXES.methods_by_name else None
        method = (service or d.DESCRIPTOR.services_by_name["DiscoveryService"]).methods_by_name[
            name
        ]
        error = attempt(channel, method, request)
        assert isinstance(error, grpc.RpcError), f"{case} was accepted"
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (case, error.details())
        assert details(error)[2] == [field], (case, error.details())
    # Nothing was lost: the sandbox is still running and usable.
    assert wait_state(channel, created.sandbox_id, [v.STATE_RUNNING]) == v.STATE_RUNNING
    request = v.DeleteSandboxRequest(sandbox_id=created.sandbox_id, grace_period_seconds=0)
    rpc(channel, "DeleteSandbox", request)


def test_undecodable_bytes_are_invalid_argument(channel: grpc.Channel) -> None:
    create = channel.unary_unary(
        path_of(SANDBOXES.methods_by_name["CreateSandbox"]),
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    with pytest.raises(grpc.RpcError) as caught:
        create(b"\x0a\xff\xff\xff", timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_create_is_idempotent_on_request_id(channel: grpc.Channel) -> None:
    request = create_request(tags=[uuid.uuid4().hex])
    request.sandbox.spec.containers[0].files.append(v.FileMount(path="/a", content=b"1"))
    request.request_id = str(uuid.uuid4())
    first = rpc(channel, "CreateSandbox", request)
    again = rpc(channel, "CreateSandbox", request)
    assert again.sandbox_id == first.sandbox_id
    assert list(again.spec.tags) == list(request.sandbox.spec.tags)
    # Racing replays (a client retry while the first is still in flight) also get one.
    racing = create_request(tags=[uuid.uuid4().hex])
    racing.request_id = str(uuid.uuid4())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda _: rpc(channel, "CreateSandbox", racing).sandbox_id, range(4)))
    assert len(ids) == 1
    listed = rpc(channel, "ListSandboxes", v.ListSandboxesRequest(tags=racing.sandbox.spec.tags))
    assert [s.sandbox_id for s in listed.sandboxes] == list(ids)
    # The same id for a different sandbox is a conflict, and changes nothing; file bytes
    # count too, though the echoed spec leaves them out.
    other_tags = create_request(tags=["something-else"])
    other_bytes = create_request(tags=request.sandbox.spec.tags)
    other_bytes.sandbox.spec.containers[0].files.append(v.FileMount(path="/a", content=b"2"))
    for different in (other_tags, other_bytes):
        different.request_id = request.request_id
        error = attempt(channel, SANDBOXES.methods_by_name["CreateSandbox"], different)
        assert isinstance(error, grpc.RpcError)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        reason, _, fields = details(error)
        assert (reason, fields) == ("CWSANDBOX_REQUEST_ID_CONFLICT", ["request_id"])
    for sandbox_id in (first.sandbox_id, *ids):
        request_stop = v.DeleteSandboxRequest(sandbox_id=sandbox_id, grace_period_seconds=0)
        assert rpc(channel, "DeleteSandbox", request_stop).sandbox.sandbox_id == sandbox_id
        wait_state(channel, sandbox_id, [v.STATE_COMPLETED, v.STATE_TERMINATED])


def test_connect_sandbox_answers_the_fallback_code(channel: grpc.Channel) -> None:
    request = v.ConnectSandboxRequest(sandbox_id=MISSING, csr_der=b"csr")
    error = attempt(channel, SANDBOXES.methods_by_name["ConnectSandbox"], request)
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    assert details(error)[0] == "CWSANDBOX_NOT_IMPLEMENTED"


def test_grace_zero_stops_at_once_and_the_record_stays_readable(channel: grpc.Channel) -> None:
    # A main process that ignores SIGTERM: with no grace it must still end at once.
    request = create_request()
    container = request.sandbox.spec.containers[0]
    container.command, container.args[:] = "/bin/sh", ["-c", "trap '' TERM; sleep infinity"]
    created = rpc(channel, "CreateSandbox", request)
    wait_state(channel, created.sandbox_id, [v.STATE_RUNNING])
    stop = v.DeleteSandboxRequest(sandbox_id=created.sandbox_id, grace_period_seconds=0)
    answered = rpc(channel, "DeleteSandbox", stop)
    assert answered.sandbox.status.state in (v.STATE_TERMINATING, v.STATE_COMPLETED)
    ended = wait_state(
        channel, created.sandbox_id, [v.STATE_COMPLETED, v.STATE_TERMINATED, v.STATE_FAILED]
    )
    assert ended in (v.STATE_COMPLETED, v.STATE_TERMINATED)
    got = rpc(channel, "GetSandbox", v.GetSandboxRequest(sandbox_id=created.sandbox_id))
    assert got.status.HasField("end_time") and got.spec.containers[0].command == "/bin/sh"
    # Stopping a stopped sandbox succeeds (the client then polls and sees it ended).
    assert rpc(channel, "DeleteSandbox", stop).sandbox.status.state == ended


def test_list_pages_and_filters_by_v1_state(channel: grpc.Channel) -> None:
    tag = uuid.uuid4().hex
    ids = [rpc(channel, "CreateSandbox", create_request(tags=[tag])).sandbox_id for _ in range(3)]
    for sandbox_id in ids:
        wait_state(channel, sandbox_id, [v.STATE_RUNNING])
    pages, token = [], ""
    while True:
        page = rpc(
            channel,
            "ListSandboxes",
            v.ListSandboxesRequest(tags=[tag], page_size=1, page_token=token),
        )
        pages.append([s.sandbox_id for s in page.sandboxes])
        token = page.next_page_token
        if not token:
            break
    assert [p for p in pages if p] == [[i] for i in ids]  # oldest first, one per page
    first = rpc(channel, "ListSandboxes", v.ListSandboxesRequest(tags=[tag], page_size=1))
    mismatch = v.ListSandboxesRequest(tags=["other"], page_token=first.next_page_token)
    error = attempt(channel, SANDBOXES.methods_by_name["ListSandboxes"], mismatch)
    assert isinstance(error, grpc.RpcError) and details(error)[2] == ["page_token"]
    stop = v.DeleteSandboxRequest(sandbox_id=ids[0], grace_period_seconds=0)
    rpc(channel, "DeleteSandbox", stop)
    wait_state(channel, ids[0], [v.STATE_COMPLETED, v.STATE_TERMINATED])

    def listed(**fields: Any) -> list[str]:
        got = rpc(channel, "ListSandboxes", v.ListSandboxesRequest(tags=[tag], **fields))
        return [s.sandbox_id for s in got.sandboxes]

    assert listed() == ids[1:]  # running ones only, by default
    assert listed(show_terminated=True) == ids
    assert listed(state=v.STATE_COMPLETED) == [ids[0]]  # a terminal state widens by itself
    assert listed(state=v.STATE_RUNNING) == ids[1:]
    assert listed(state=v.STATE_PREPARING) == []
    for sandbox_id in ids[1:]:
        rpc(channel, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=sandbox_id))
