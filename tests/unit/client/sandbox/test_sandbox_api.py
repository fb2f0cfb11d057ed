"""Public value types and helpers, and API compatibility with the official 0.26.2 client.

The compatibility check compares parameter names and kinds of the shared public API with
the official client's, introspected in its own virtualenv when one is installed (only
public signatures are read); a fixed list of the key signatures is checked regardless.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import time
from typing import Any

import pytest

import cwsandbox
from cwsandbox import (
    NetworkOptions,
    OperationRef,
    ProcessResult,
    ResourceOptions,
    Sandbox,
    SandboxDefaults,
    SandboxStatus,
    Session,
)
from cwsandbox._operation import done_ref
from cwsandbox._resources import resource_messages
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from tests.support.official import official_python
from tests.unit.client.sandbox.gateway_standin import Gateway

#: (object path, method) pairs whose signatures must match the official client's.
SHARED = [
    ("Sandbox", "__init__"), ("Sandbox", "run"), ("Sandbox", "exec"), ("Sandbox", "stop"),
    ("Sandbox", "wait"), ("Sandbox", "wait_until_complete"), ("Sandbox", "get_status"),
    ("Sandbox", "read_file"), ("Sandbox", "write_file"), ("Sandbox", "list"),
    ("Sandbox", "from_id"), ("Sandbox", "delete"), ("Sandbox", "start"), ("Sandbox", "session"),
    ("Session", "__init__"), ("Session", "sandbox"), ("Session", "list"), ("Session", "from_id"),
    ("Session", "close"), ("Session", "adopt"), ("SandboxDefaults", "__init__"),
    ("SandboxDefaults", "merge_tags"), ("SandboxDefaults", "with_overrides"),
    ("SandboxDefaults", "from_dict"), ("NetworkOptions", "__init__"),
    ("ResourceOptions", "__init__"), ("ProcessResult", "__init__"), ("OperationRef", "result"),
    ("Process", "wait"), ("Process", "poll"), ("Process", "result"), ("Process", "cancel"),
    ("StreamWriter", "write"), ("StreamWriter", "writeline"), ("StreamWriter", "close"),
    ("StreamReader", "close"), ("Secret", "__init__"), ("FileSystemSnapshotOptions", "__init__"),
    (None, "wait"), (None, "results"),
]  # fmt: skip

_DUMP = """
import inspect, json, sys, cwsandbox
out = {}
for owner, name in json.loads(sys.argv[1]):
    obj = getattr(cwsandbox, name) if owner is None else getattr(getattr(cwsandbox, owner), name)
    sig = inspect.signature(obj)
    out[f"{owner}.{name}"] = [(p.name, p.kind.name) for p in sig.parameters.values()]
print(json.dumps(out))
"""


def params(owner: str | None, name: str) -> list[tuple[str, str]]:
    obj = getattr(cwsandbox, name) if owner is None else getattr(getattr(cwsandbox, owner), name)
    return [(p.name, p.kind.name) for p in inspect.signature(obj).parameters.values()]


def test_signatures_match_official_client() -> None:
    done = subprocess.run(
        [str(official_python()), "-c", _DUMP, json.dumps(SHARED)],
        capture_output=True, text=True, check=True, timeout=60, cwd="/tmp",
    )  # fmt: skip
    official = {k: [tuple(p) for p in v] for k, v in json.loads(done.stdout).items()}
    for owner, name in SHARED:
        assert params(owner, name) == official[f"{owner}.{name}"], f"{owner}.{name}"


def test_key_signatures() -> None:
    run = [p for p, _ in params("Sandbox", "run")]
    assert run[:3] == ["args", "container_image", "defaults"]
    assert {"profile_ids", "profile_names", "runner_ids", "network", "resources", "tags"} <= set(
        run
    )
    assert [p for p, _ in params("Sandbox", "exec")] == [
        "self", "command", "cwd", "check", "timeout_seconds", "stdin",
    ]  # fmt: skip
    assert [p for p, _ in params("Sandbox", "stop")][1:4] == [
        "snapshot_on_stop", "graceful_shutdown_seconds", "missing_ok",
    ]  # fmt: skip


def test_public_names_exported() -> None:
    for name in [
        "Sandbox", "Session", "SandboxDefaults", "NetworkOptions", "ResourceOptions",
        "SandboxStatus", "OperationRef", "Process", "ProcessResult", "StreamReader",
        "StreamWriter", "Secret", "FileSystemSnapshotOptions", "wait", "results",
    ]:  # fmt: skip
        assert name in cwsandbox.__all__
        assert hasattr(cwsandbox, name)


def test_value_objects_are_frozen() -> None:
    for obj in (SandboxDefaults(), NetworkOptions(), ResourceOptions(), ProcessResult("", "", 0)):
        field = dataclasses.fields(obj)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


def test_sandbox_defaults_helpers() -> None:
    d = SandboxDefaults(tags=["a"], profile_ids=["p"])  # type: ignore[arg-type]
    assert d.tags == ("a",) and d.profile_ids == ("p",)
    assert d.merge_tags(["b"]) == ["a", "b"]
    assert d.merge_environment_variables({"X": "1"}) == {"X": "1"}
    assert d.with_overrides(container_image="x").container_image == "x"
    assert SandboxDefaults.from_dict({"tags": ["x"]}).tags == ("x",)
    assert SandboxDefaults().base_url == "http://127.0.0.1:50051"  # local sandboxd, not hosted
    assert SandboxDefaults().args == ("-c", 'trap "exit 0" TERM INT; sleep infinity & wait')
    with pytest.raises(TypeError):
        SandboxDefaults(tags="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxDefaults(request_timeout_seconds=0)


def test_sandbox_status() -> None:
    assert (
        SandboxStatus.from_proto(gw.SandboxStatus.SANDBOX_STATUS_TERMINATING)
        is SandboxStatus.TERMINATING
    )
    assert SandboxStatus.from_proto(42) is SandboxStatus.UNSPECIFIED
    assert all(SandboxStatus.from_proto(s.to_proto()) is s for s in SandboxStatus)
    assert SandboxStatus.RUNNING == "running"
    assert SandboxStatus.parse("Completed") is SandboxStatus.COMPLETED


def test_resource_messages_none() -> None:
    assert resource_messages(None) == (None, None)
    assert resource_messages({}) == (None, None)


def slow(value: Any, delay: float) -> OperationRef[Any]:
    import concurrent.futures
    import threading

    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    threading.Timer(delay, future.set_result, (value,)).start()
    return OperationRef(future)


def test_wait_and_results() -> None:
    fast, late = done_ref(1), slow(2, 1.5)  # far beyond the 0.05 s timeout, even loaded
    done, pending = cwsandbox.wait([late, fast], num_returns=1)
    assert done == [fast] and pending == [late]
    started = time.monotonic()
    done, pending = cwsandbox.wait([late, fast], timeout=0.05)
    assert pending == [late] and time.monotonic() - started < 1.0
    assert cwsandbox.results([fast, late]) == [1, 2]
    assert cwsandbox.results(fast) == 1
    with pytest.raises(ValueError):
        cwsandbox.wait([fast], num_returns=2)


def test_wait_on_sandboxes(gateway: Gateway) -> None:
    boxes = [Sandbox.run() for _ in range(2)]
    done, pending = cwsandbox.wait(boxes)
    assert done == boxes and pending == []
    assert all(sb.status is SandboxStatus.RUNNING for sb in boxes)


def test_reprs(gateway: Gateway) -> None:
    sb = Sandbox(container_image="i")
    assert repr(sb) == "<Sandbox id=None status=not started>"
    assert repr(Session()) == "<Session 0 sandboxes>"
    assert "done" in repr(done_ref(None))


def test_defaults_validate_resources_early() -> None:
    with pytest.raises(ValueError):
        SandboxDefaults(resources={"cpu": "lots"})
