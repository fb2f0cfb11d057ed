"""Bad input for every sandbox RPC: a clear error each time, and nothing else is disturbed.

Raw gRPC stubs send exactly the malformed requests a buggy client could send (empty and
unknown ids, huge values, invalid paths, invalid UTF-8, streams cancelled mid-transfer).
A sandbox started first must still work at the end, and the control plane keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from tests.e2e.conftest import Platform
from tests.support.processes import keyed_channel


@pytest.fixture(scope="module")
def channel(platform: Platform) -> Iterator[grpc.Channel]:
    with keyed_channel(
        platform.target,
        platform.api_key,
        options=[("grpc.max_send_message_length", 100 * 1024 * 1024)],
    ) as ch:
        yield ch


@pytest.fixture(scope="module")
def gateway(channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture(scope="module")
def bystander(gateway: gateway_pb2_grpc.GatewayServiceStub) -> Iterator[str]:
    """A sandbox that must be unaffected by everything below."""
    started = gateway.Start(
        g.StartSandboxRequest(
            command="/bin/sh",
            args=["-c", 'trap "exit 0" TERM; sleep infinity & wait'],
            profile_names=["locked-down"],
        ),
        timeout=30,
    )
    deadline = time.monotonic() + 30
    while gateway.Get(
        g.GetSandboxRequest(sandbox_id=started.sandbox_id), timeout=10
    ).sandbox_status != (g.SANDBOX_STATUS_RUNNING):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield started.sandbox_id
    gateway.Stop(g.StopSandboxRequest(sandbox_id=started.sandbox_id, graceful_shutdown_seconds=1))


def reason_of(error: grpc.RpcError) -> tuple[str, dict[str, str], list[str]]:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    raw = trailers.get("grpc-status-details-bin")
    if raw is None:
        return "", {}, []
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return info.reason, dict(info.metadata), fields


def fails(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)  # type: ignore[operator]
    return caught.value


ID_RPCS = [
    ("Get", g.GetSandboxRequest),
    ("Stop", g.StopSandboxRequest),
    ("Delete", g.DeleteSandboxRequest),
    ("RetrieveFile", g.RetrieveFileSandboxRequest),
]


@pytest.mark.parametrize(("rpc", "message"), ID_RPCS)
def test_empty_unknown_and_huge_ids(
    gateway: gateway_pb2_grpc.GatewayServiceStub, bystander: str, rpc: str, message: type
) -> None:
    call = getattr(gateway, rpc)
    extra = {"filepath": "/etc/hostname"} if rpc == "RetrieveFile" else {}
    empty = fails(call, message(sandbox_id="", **extra))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sandbox_id" in empty.details()
    unknown = fails(call, message(sandbox_id="sb-does-not-exist", **extra))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(unknown)[0] == "CWSANDBOX_SANDBOX_NOT_FOUND"
    huge = fails(call, message(sandbox_id="x" * 100_000, **extra))
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(huge)[2] == ["sandbox_id"]


@pytest.mark.parametrize(("rpc", "message"), ID_RPCS)
def test_invalid_utf8_is_invalid_argument(
    channel: grpc.Channel, bystander: str, rpc: str, message: type
) -> None:
    raw = message(sandbox_id="AAAA").SerializeToString().replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    call = channel.unary_unary(
        f"/coreweave.sandbox.v1beta2.GatewayService/{rpc}",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    error = fails(call, raw)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in error.details()
    assert "UTF-8" in error.details()


def test_file_rpcs_reject_bad_paths_and_sizes(
    gateway: gateway_pb2_grpc.GatewayServiceStub, bystander: str
) -> None:
    for path, field in [
        ("relative/path", "filepath"),
        ("/tmp/\x00x", "filepath"),
        ("/" + "a" * 5000, "filepath"),
    ]:
        error = fails(gateway.AddFile, g.AddFileSandboxRequest(sandbox_id=bystander, filepath=path))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error)[2] == [field]
    too_big = fails(
        gateway.AddFile,
        g.AddFileSandboxRequest(
            sandbox_id=bystander, filepath="/tmp/big", file_contents=b"x" * (32 * 1024 * 1024 + 1)
        ),
    )
    reason, metadata, _ = reason_of(too_big)
    assert reason == "CWSANDBOX_FILE_TOO_LARGE"
    assert metadata["size_bytes"] == str(32 * 1024 * 1024 + 1)
    assert metadata["max_size_bytes"] == str(32 * 1024 * 1024)


def test_file_errors_never_look_like_a_missing_sandbox(
    gateway: gateway_pb2_grpc.GatewayServiceStub, bystander: str
) -> None:
    missing = fails(
        gateway.RetrieveFile, g.RetrieveFileSandboxRequest(sandbox_id=bystander, filepath="/nope")
    )
    assert missing.code() != grpc.StatusCode.NOT_FOUND
    assert reason_of(missing)[0] == "CWSANDBOX_FILE_NOT_FOUND"
    directory = fails(
        gateway.RetrieveFile, g.RetrieveFileSandboxRequest(sandbox_id=bystander, filepath="/tmp")
    )
    assert reason_of(directory)[0] == "CWSANDBOX_FILE_IS_DIRECTORY"
    into_dir = fails(
        gateway.AddFile,
        g.AddFileSandboxRequest(sandbox_id=bystander, filepath="/tmp", file_contents=b"x"),
    )
    assert reason_of(into_dir)[0] == "CWSANDBOX_FILE_IS_DIRECTORY"
    # A parent that is a regular file reads as "not found" both ways.
    through_file = fails(
        gateway.AddFile,
        g.AddFileSandboxRequest(sandbox_id=bystander, filepath="/etc/passwd/x", file_contents=b""),
    )
    assert reason_of(through_file)[0] == "CWSANDBOX_FILE_NOT_FOUND"
    read_through = fails(
        gateway.RetrieveFile,
        g.RetrieveFileSandboxRequest(sandbox_id=bystander, filepath="/etc/passwd/x"),
    )
    assert reason_of(read_through)[0] == "CWSANDBOX_FILE_NOT_FOUND"


def test_list_and_stop_arguments(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    for request, field in [
        (g.ListSandboxesRequest(status=42), "status"),
        (g.ListSandboxesRequest(page_size=-1), "page_size"),
        (g.ListSandboxesRequest(page_token="garbage"), "page_token"),
    ]:
        error = fails(gateway.List, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error)[2] == [field]
    error = fails(
        gateway.Stop, g.StopSandboxRequest(sandbox_id="sb-x", graceful_shutdown_seconds=-3)
    )
    assert reason_of(error)[2] == ["graceful_shutdown_seconds"]


def test_unsupported_rpcs_say_so(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    error = fails(gateway.Raw, g.RawSandboxRequest(sandbox_id="sb-x"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason_of(error)[0] == "CWSANDBOX_NOT_IMPLEMENTED"


def test_stream_exec_bad_init(channel: grpc.Channel, bystander: str) -> None:
    stub = streaming_pb2_grpc.GatewayStreamingServiceStub(channel)
    cases = [
        ([streaming_pb2.ExecStreamRequest(stdin=streaming_pb2.ExecStreamData(data=b"x"))], "init"),
        (
            [
                streaming_pb2.ExecStreamRequest(
                    init=streaming_pb2.ExecStreamInit(sandbox_id=bystander)
                )
            ],
            "init.command",
        ),
        ([], "init"),
    ]
    for frames, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamExec(iter(frames), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in caught.value.details()
    init = streaming_pb2.ExecStreamInit(sandbox_id="sb-ghost", command=["true"])
    with pytest.raises(grpc.RpcError) as unknown:
        list(stub.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=30))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancelled_exec_mid_transfer_kills_nothing_else(
    channel: grpc.Channel, gateway: gateway_pb2_grpc.GatewayServiceStub, bystander: str
) -> None:
    stub = streaming_pb2_grpc.GatewayStreamingServiceStub(channel)
    init = streaming_pb2.ExecStreamInit(sandbox_id=bystander, command=["cat"])
    release = threading.Event()

    def frames() -> Iterator[streaming_pb2.ExecStreamRequest]:
        yield streaming_pb2.ExecStreamRequest(init=init)
        for _ in range(20):
            yield streaming_pb2.ExecStreamRequest(
                stdin=streaming_pb2.ExecStreamData(data=b"y" * 65536)
            )
        release.wait(30)

    call = stub.StreamExec(frames(), timeout=60)
    received = 0
    for response in call:
        if response.WhichOneof("response") == "output":
            received += len(response.output.data)
            if received >= 65536:
                call.cancel()
                break
    release.set()
    # The bystander and the control plane are fine.
    probe = streaming_pb2.ExecStreamInit(sandbox_id=bystander, command=["echo", "alive"])
    out = b"".join(
        r.output.data
        for r in stub.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=probe)]), timeout=30)
        if r.WhichOneof("response") == "output"
    )
    assert out == b"alive\n"
    # The cancelled cat is killed (only the keep-alive processes remain), soon.
    ps = streaming_pb2.ExecStreamInit(sandbox_id=bystander, command=["sh", "-c", "ps -eo comm"])
    deadline = time.monotonic() + 10
    while True:
        names = b"".join(
            r.output.data
            for r in stub.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=ps)]), timeout=30)
            if r.WhichOneof("response") == "output"
        ).split()
        if b"cat" not in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert b"cat" not in names
    status = gateway.Get(g.GetSandboxRequest(sandbox_id=bystander), timeout=10)
    assert status.sandbox_status == g.SANDBOX_STATUS_RUNNING
