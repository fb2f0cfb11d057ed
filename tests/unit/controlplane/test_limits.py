"""Each size limit: at the limit is accepted, one past it is refused naming the field.

These pin the arithmetic of ``limits.py`` (the real requests through a real control plane
are in ``tests/e2e/test_limits_e2e.py``), and that the worst case fits the agent protocol.
"""

from __future__ import annotations

import json

import grpc
import pytest

from sandboxd.backends.local import protocol
from sandboxd.controlplane import limits as L
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.support.limit_cases import (
    ENV_AT_PAYLOAD,
    ENV_OVER,
    ENV_OVER_PAYLOAD,
    EXEC_ARGV_OVER,
    FULL_ARGS,
    START_ARGS_OVER,
)

CTRL = "\x01"  # the costliest character to JSON-encode (six bytes)


def field_of(call: object, *args: object) -> str:
    with pytest.raises(ApiError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = caught.value.violations
    return violation.field


def start(**fields: object) -> g.StartSandboxRequest:
    return g.StartSandboxRequest(command="sh", **fields)  # type: ignore[arg-type]


def exec_init(
    command: list[str], env: dict[str, str] | None = None
) -> streaming_pb2.ExecStreamInit:
    return streaming_pb2.ExecStreamInit(sandbox_id="sb", command=command, env=env or {})


def test_the_arithmetic_fits_the_agent_protocol() -> None:
    assert L.AGENT_MESSAGE_BYTES <= protocol.MAX_MESSAGE  # raise together, never above
    assert L.PAYLOAD_BYTES == ((4 << 20) - (64 << 10)) // 6  # 672 KiB of 4 MiB
    assert L.MAX_ARG_BYTES == L.LINUX_MAX_ARG_STRLEN  # never more than execve takes
    assert L.MAX_ARGV_BYTES <= L.PAYLOAD_BYTES and L.MAX_ENV_BYTES <= L.PAYLOAD_BYTES
    # The exec message as process.open_exec builds it, at its worst (all control characters).
    args = [CTRL * (L.MAX_ARGV_BYTES // L.MAX_ARGS)] * L.MAX_ARGS
    names = [f"V{i:03d}" for i in range(L.MAX_ENV_ENTRIES)]
    value = CTRL * ((L.PAYLOAD_BYTES - L.MAX_ARGV_BYTES) // L.MAX_ENV_ENTRIES - 4)
    env = dict.fromkeys(names, value)
    L.check_exec(args, env, L.RUNNER_EXEC)  # allowed...
    message = {"op": "exec", "argv": args, "env": env, "cwd": "/" + CTRL * 250, "tty": True,
               "size": [10_000, 10_000]}  # fmt: skip
    size = len(protocol.encode(message))
    assert size <= protocol.MAX_MESSAGE, size  # ...and fits (the kernel's cap is a bit above)
    assert json.loads(protocol.encode(message)) == message


def test_the_longest_file_path_fits_the_agent_protocol() -> None:
    path = "/" + "\U0001f600" * (L.MAX_FILE_PATH_CHARS - 1)  # two six-byte escapes each
    message = {"op": "write_file", "path": path, "make_parents": True, "mode": 0o644}
    assert len(protocol.encode(message)) <= 0.8 * protocol.MAX_MESSAGE


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"args": ["x"] * L.MAX_ARGS}, "args"),  # the command plus MAX_ARGS arguments
        ({"args": ["a" * (L.MAX_ARG_BYTES + 1)]}, "args[0]"),
        ({"args": START_ARGS_OVER}, "args"),
        ({"environment_variables": {f"K{i}": "" for i in range(L.MAX_ENV_ENTRIES + 1)}},
         "environment_variables"),
        ({"environment_variables": {"K" * (L.MAX_ENV_NAME_BYTES + 1): "v"}},
         "environment_variables"),
        ({"environment_variables": {"K": "v" * (L.MAX_ENV_VALUE_BYTES + 1)}},
         "environment_variables"),
        ({"environment_variables": ENV_OVER}, "environment_variables"),
        ({"args": FULL_ARGS, "environment_variables": ENV_OVER_PAYLOAD},
         "environment_variables"),  # each within its own limit, together over the payload
        ({"mounted_files": [g.MountedFile(mount_path=f"/f{i}") for i in range(17)]},
         "mounted_files"),
        ({"mounted_files": [g.MountedFile(mount_path="/" + "p" * 256)]},
         "mounted_files[0].mount_path"),
        ({"mounted_files": [g.MountedFile(mount_path="/a", file_content=b"x" * (16 << 20 | 1))]},
         "mounted_files[0].file_content"),
        ({"mounted_files": [g.MountedFile(mount_path=f"/{i}", file_content=b"x" * (11 << 20))
                            for i in range(3)]}, "mounted_files[2].file_content"),
        ({"tags": ["t"] * 33}, "tags"),
        ({"tags": ["t" * 129]}, "tags"),
        ({"profile_names": ["p"] * 17}, "profile_names"),
        ({"profile_ids": ["p" * 129]}, "profile_ids"),
        ({"runner_ids": ["r"] * 17}, "runner_ids"),
        ({"container_image": "i" * 257}, "container_image"),
        ({"network": g.NetworkOptions(egress_mode="m" * 129)}, "network.egress_mode"),
        ({"network": g.NetworkOptions(exposed_ports=list(range(1, 34)))},
         "network.exposed_ports"),
        ({"pod_annotations": {f"k{i}": "" for i in range(65)}}, "pod_annotations"),
        ({"pod_annotations": {"k": "v" * (16 << 10)}}, "pod_annotations"),
    ],
)  # fmt: skip
def test_start_over_a_limit_names_the_field(fields: dict[str, object], field: str) -> None:
    assert field_of(parse_start_request, start(**fields)) == field


def test_an_oversized_program_is_the_command_field() -> None:
    too_long = "x" * (L.MAX_ARG_BYTES + 1)
    assert field_of(parse_start_request, g.StartSandboxRequest(command=too_long)) == "command"


def test_start_at_every_limit_is_accepted() -> None:
    parse_start_request(start(args=["x"] * (L.MAX_ARGS - 1), tags=["t" * 128] * 32))
    parse_start_request(start(args=FULL_ARGS, environment_variables=ENV_AT_PAYLOAD))
    files = [g.MountedFile(mount_path=f"/{i:02d}" + "p" * 60, file_content=b"x" * (2 << 20))
             for i in range(16)]  # fmt: skip
    parse_start_request(start(mounted_files=files))


@pytest.mark.parametrize(
    ("command", "env", "field"),
    [
        (["x"] * (L.MAX_ARGS + 1), {}, "init.command"),
        (["sh", "y" * (L.MAX_ARG_BYTES + 1)], {}, "init.command[1]"),
        (EXEC_ARGV_OVER, {}, "init.command"),
        (["true"], {f"K{i}": "" for i in range(L.MAX_ENV_ENTRIES + 1)}, "init.env"),
        (["true"], {"K" * (L.MAX_ENV_NAME_BYTES + 1): ""}, "init.env"),
        (["true"], {"K": "v" * (L.MAX_ENV_VALUE_BYTES + 1)}, "init.env"),
        (["sh", *FULL_ARGS], ENV_OVER_PAYLOAD, "init.env"),
    ],
)
def test_exec_over_a_limit_names_the_field(
    command: list[str], env: dict[str, str], field: str
) -> None:
    assert field_of(L.check_exec_init, exec_init(command, env)) == field


def test_runner_field_names() -> None:
    spec = runner_pb2.SandboxSpec(command=["sh", "x" * (L.MAX_ARG_BYTES + 1)])
    with pytest.raises(L.LimitExceeded) as caught:
        L.check_runner_spec(spec)
    assert caught.value.field == "command[1]"
    spec = runner_pb2.SandboxSpec(command=["sh"], working_dir="/" + "w" * 300)
    with pytest.raises(L.LimitExceeded) as caught:
        L.check_runner_spec(spec)
    assert caught.value.field == "working_dir"
    files = [runner_pb2.MountedFile(path="/" + "p" * 300)]
    with pytest.raises(L.LimitExceeded) as caught:
        L.check_runner_spec(runner_pb2.SandboxSpec(command=["sh"], mounted_files=files))
    assert caught.value.field == "mounted_files[0].path"
    with pytest.raises(L.LimitExceeded) as caught:
        env = {"K": "v" * (L.MAX_ENV_VALUE_BYTES + 1)}
        L.check_runner_exec(runner_pb2.OpenExec(command=["sh"], env=env))
    assert caught.value.field == "env"


def test_sizes_count_utf8_bytes_not_characters() -> None:
    wide = "é" * (L.MAX_ARG_BYTES // 2 + 1)  # two bytes each: over by two
    assert field_of(L.check_exec_init, exec_init(["echo", wide])) == "init.command[1]"
