"""``@session.function()``: payload, runner, result, errors, cleanup (§5.4).

Runs against the in-process stand-in gateway; its exec emulation runs the real runner
script with this Python on copies of the payload and result files (client-side unit tests
only; e2e runs it in a real sandbox).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from cwsandbox import AsyncFunctionError, FunctionError, RemoteFunction, SandboxDefaults, Session
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from tests.unit.client.sandbox.exec_emulation import FileSystem, emulate
from tests.unit.client.sandbox.gateway_standin import Gateway

FACTOR = 3


def triple(x: float) -> float:
    return x * FACTOR


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += round(math.sqrt(16))
        return self.n


@pytest.fixture
def fs(gateway: Gateway) -> FileSystem:
    return emulate(gateway.servicer)


@pytest.fixture
def session(gateway: Gateway) -> Iterator[Session]:
    with Session(SandboxDefaults(tags=["fn"], temp_dir="/work/tmp")) as s:
        yield s


def test_remote_runs_in_its_own_sandbox_and_cleans_up(
    gateway: Gateway, fs: FileSystem, session: Session
) -> None:
    offset = 10

    @session.function(container_image="python:3.12", environment_variables={"A": "1"})
    def compute(x: int, y: int = 1) -> dict[str, Any]:
        return {"sum": x + y + offset, "tripled": triple(x), "bumped": Counter().bump()}

    assert isinstance(compute, RemoteFunction)
    assert compute.remote(2, y=3).result() == {"sum": 15, "tripled": 6, "bumped": 4}
    start = gateway.servicer.requests("Start")[0]
    assert (start.container_image, dict(start.environment_variables)) == (
        "python:3.12",
        {"A": "1"},
    )
    assert list(start.tags) == ["fn"]
    (payload_path,) = [r.filepath for r in gateway.servicer.requests("AddFile")]
    assert payload_path.startswith("/work/tmp/sandbox_payload_") and payload_path.endswith(".json")
    (result_path,) = [r.filepath for r in gateway.servicer.requests("RetrieveFile")]
    assert result_path == payload_path.replace("payload", "result")
    assert fs.argvs[0][:2] == ["python", "-c"] and fs.argvs[0][3:] == [payload_path, result_path]
    stops = gateway.servicer.requests("Stop")
    assert len(stops) == 1 and session.sandbox_count == 0  # stopped and forgotten
    box = gateway.servicer.boxes[stops[0].sandbox_id]
    assert box.status == gw.SandboxStatus.SANDBOX_STATUS_COMPLETED


def test_map_runs_every_item(gateway: Gateway, fs: FileSystem, session: Session) -> None:
    @session.function()
    def power(base: int, exp: int = 2) -> int:
        return int(base**exp)

    refs = power.map([(2,), (3, 3), (4, 0)])
    assert [r.result() for r in refs] == [4, 27, 1]
    assert power.local(5) == 25
    assert len(gateway.servicer.requests("Start")) == 3


def test_remote_exception_carries_the_remote_traceback(
    gateway: Gateway, fs: FileSystem, session: Session
) -> None:
    @session.function()
    def divide(a: int, b: int) -> float:
        return a / b

    with pytest.raises(FunctionError) as info:
        divide.remote(1, 0).result()
    err = info.value
    assert (err.exception_type, err.exception_message) == ("ZeroDivisionError", "division by zero")
    assert err.remote_traceback is not None
    assert "in divide" in err.remote_traceback and __file__ in err.remote_traceback
    assert "return a / b" in err.remote_traceback  # line numbers match this file
    assert "<string>" not in err.remote_traceback  # the runner's own frames are hidden
    assert "Remote traceback" in str(err)
    assert session.sandbox_count == 0


def test_result_must_be_json(gateway: Gateway, fs: FileSystem, session: Session) -> None:
    @session.function()
    def opaque() -> object:
        return object()

    with pytest.raises(FunctionError, match="not JSON-serializable"):
        opaque.remote().result()


def test_arguments_must_be_json(gateway: Gateway, session: Session) -> None:
    @session.function()
    def echo(x: Any) -> Any:
        return x

    with pytest.raises(TypeError, match="JSON-serializable"):
        echo.remote({1, 2})
    assert gateway.servicer.requests("Start") == []  # refused before any RPC


def test_async_functions_are_refused(session: Session) -> None:
    async def later() -> int:
        return 1

    with pytest.raises(AsyncFunctionError):
        session.function()(later)


def test_missing_result_reports_the_runner_output(
    gateway: Gateway, fs: FileSystem, session: Session
) -> None:
    def crash(init: Any, requests: Iterator[Any]) -> Iterator[Any]:
        from tests.unit.client.sandbox.gateway_standin import exit_frame, out

        yield out("python: not found\n", stderr=True)
        yield exit_frame(127)

    @session.function()
    def fine() -> int:
        return 1

    gateway.servicer.exec_script = crash
    with pytest.raises(FunctionError, match=r"exit code 127\): python: not found"):
        fine.remote().result()
    assert session.sandbox_count == 0


def test_payload_is_plain_json(gateway: Gateway, fs: FileSystem, session: Session) -> None:
    @session.function()
    def ident(x: list[int]) -> list[int]:
        return x

    assert ident.remote((1, 2)).result() == [1, 2]  # tuples come back as lists
    sid = gateway.servicer.requests("AddFile")[0].sandbox_id
    payload = next(
        json.loads(v) for k, v in gateway.servicer.boxes[sid].files.items() if "payload" in k
    )
    assert payload["name"] == "ident" and payload["args"] == [[1, 2]]
    assert "def ident" in payload["sources"][-1][2]
    assert "@session.function" not in payload["sources"][-1][2]
