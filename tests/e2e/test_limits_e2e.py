"""Every size limit through the real control plane: INVALID_ARGUMENT naming the field.

Raw stubs against ``sandboxd up`` send one oversized field at a time (``limits.py`` has the
numbers and why). Each is refused before anything is placed or reaches the runner, and the
bystander sandbox started first still runs commands at the end, as does the control plane.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from sandboxd.controlplane import limits as L
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from tests.e2e.test_bad_input import bystander, channel, fails, gateway, reason_of
from tests.support.limit_cases import (
    ENV_OVER,
    ENV_OVER_PAYLOAD,
    EXEC_ARGV_OVER,
    FULL_ARGS,
    START_ARGS_OVER,
)

__all__ = ["bystander", "channel", "gateway"]

BIG_ARG = "a" * (L.MAX_ARG_BYTES + 1)
BIG_VALUE = "v" * (L.MAX_ENV_VALUE_BYTES + 1)
START_CASES = [
    ({"command": "x" * (L.MAX_ARG_BYTES + 1)}, "command"),
    ({"args": ["x"] * L.MAX_ARGS}, "args"),
    ({"args": ["-c", BIG_ARG]}, "args[1]"),
    ({"args": START_ARGS_OVER}, "args"),
    ({"environment_variables": {f"K{i}": "" for i in range(L.MAX_ENV_ENTRIES + 1)}},
     "environment_variables"),
    ({"environment_variables": {"K" * (L.MAX_ENV_NAME_BYTES + 1): ""}}, "environment_variables"),
    ({"environment_variables": {"K": BIG_VALUE}}, "environment_variables"),
    ({"environment_variables": ENV_OVER}, "environment_variables"),
    ({"args": FULL_ARGS, "environment_variables": ENV_OVER_PAYLOAD}, "environment_variables"),
    ({"mounted_files": [g.MountedFile(mount_path=f"/f{i}")
                        for i in range(L.MAX_MOUNTED_FILES + 1)]}, "mounted_files"),
    ({"mounted_files": [g.MountedFile(mount_path="/" + "p" * L.MAX_PATH_BYTES)]},
     "mounted_files[0].mount_path"),
    ({"mounted_files": [g.MountedFile(mount_path="/big",
                                      file_content=b"x" * (L.MAX_MOUNTED_FILE_BYTES + 1))]},
     "mounted_files[0].file_content"),
    ({"mounted_files": [g.MountedFile(mount_path=f"/f{i}", file_content=b"x" * (12 << 20))
                        for i in range(3)]}, "mounted_files[2].file_content"),
    ({"tags": ["t"] * (L.MAX_TAGS + 1)}, "tags"),
    ({"tags": ["t" * (L.MAX_TAG_BYTES + 1)]}, "tags"),
    ({"profile_names": ["p"] * (L.MAX_NAMES + 1)}, "profile_names"),
    ({"profile_ids": ["p" * (L.MAX_NAME_BYTES + 1)]}, "profile_ids"),
    ({"runner_ids": ["r" * (L.MAX_NAME_BYTES + 1)]}, "runner_ids"),
    ({"container_image": "i" * (L.MAX_IMAGE_BYTES + 1)}, "container_image"),
    ({"network": g.NetworkOptions(egress_mode="m" * (L.MAX_NAME_BYTES + 1))},
     "network.egress_mode"),
    ({"network": g.NetworkOptions(ingress_mode="m" * (L.MAX_NAME_BYTES + 1))},
     "network.ingress_mode"),
    ({"network": g.NetworkOptions(exposed_ports=list(range(1, L.MAX_EXPOSED_PORTS + 2)))},
     "network.exposed_ports"),
    ({"pod_annotations": {f"k{i}": "" for i in range(L.MAX_ANNOTATIONS + 1)}},
     "pod_annotations"),
]  # fmt: skip
EXEC_CASES = [
    (["x"] * (L.MAX_ARGS + 1), {}, "init.command"),
    (["sh", BIG_ARG], {}, "init.command[1]"),
    (EXEC_ARGV_OVER, {}, "init.command"),
    (["true"], {f"K{i}": "" for i in range(L.MAX_ENV_ENTRIES + 1)}, "init.env"),
    (["true"], {"K" * (L.MAX_ENV_NAME_BYTES + 1): ""}, "init.env"),
    (["true"], {"K": BIG_VALUE}, "init.env"),
    (["true"], ENV_OVER, "init.env"),
    (["sh", *FULL_ARGS], ENV_OVER_PAYLOAD, "init.env"),
]


@pytest.fixture(scope="module")
def streaming(channel: grpc.Channel) -> streaming_pb2_grpc.GatewayStreamingServiceStub:
    return streaming_pb2_grpc.GatewayStreamingServiceStub(channel)


def exec_output(
    stub: streaming_pb2_grpc.GatewayStreamingServiceStub, sandbox_id: str, *argv: str
) -> bytes:
    init = streaming_pb2.ExecStreamInit(sandbox_id=sandbox_id, command=argv)
    frames = stub.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=30)
    return b"".join(f.output.data for f in frames if f.WhichOneof("response") == "output")


@pytest.fixture(scope="module")
def survivor_check(
    bystander: str, streaming: streaming_pb2_grpc.GatewayStreamingServiceStub
) -> Iterator[None]:
    """After every case of this module, the bystander still runs commands."""
    yield
    assert exec_output(streaming, bystander, "echo", "alive") == b"alive\n"


@pytest.mark.parametrize(("fields", "field"), START_CASES)
def test_start_field_over_its_limit(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    survivor_check: None,
    fields: dict[str, object],
    field: str,
) -> None:
    request = g.StartSandboxRequest(**{"command": "sh", **fields})  # type: ignore[arg-type]
    error = fails(gateway.Start, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    reason, metadata, violations = reason_of(error)
    assert (reason, metadata.get("field"), violations) == (
        "CWSANDBOX_INVALID_ARGUMENT",
        field,
        [field],
    )
    assert field in error.details()


@pytest.mark.parametrize(("command", "env", "field"), EXEC_CASES)
def test_exec_field_over_its_limit(
    streaming: streaming_pb2_grpc.GatewayStreamingServiceStub,
    bystander: str,
    survivor_check: None,
    command: list[str],
    env: dict[str, str],
    field: str,
) -> None:
    init = streaming_pb2.ExecStreamInit(sandbox_id=bystander, command=command, env=env)
    with pytest.raises(grpc.RpcError) as caught:
        list(streaming.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=30))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert reason_of(error)[2] == [field]
    assert exec_output(streaming, bystander, "echo", "still") == b"still\n"


def test_the_largest_exec_allowed_runs(
    streaming: streaming_pb2_grpc.GatewayStreamingServiceStub, bystander: str
) -> None:
    argv = ["sh", "-c", 'printf %s "$1" | wc -c', "sh", "\x01" * (L.MAX_ARG_BYTES - 20)]
    env = {f"V{i:02d}": "\x01" * 28 for i in range(L.MAX_ENV_ENTRIES)}
    init = streaming_pb2.ExecStreamInit(sandbox_id=bystander, command=argv, env=env)
    frames = list(
        streaming.StreamExec(iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=30)
    )
    out = b"".join(f.output.data for f in frames if f.WhichOneof("response") == "output")
    assert out.strip() == str(L.MAX_ARG_BYTES - 20).encode()
    assert frames[-1].exit.exit_code == 0
