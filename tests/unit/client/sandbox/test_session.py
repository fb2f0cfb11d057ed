"""``Session``: lazy sandboxes with shared defaults, listing by tags, cleanup on close/exit.

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cwsandbox import Sandbox, SandboxDefaults, SandboxError, SandboxStatus, Session
from cwsandbox._session import _OPEN, _close_open_sessions
from tests.unit.client.sandbox.gateway_standin import Gateway, failure


def methods(gateway: Gateway) -> list[str]:
    return [c.method for c in gateway.servicer.calls]


def test_session_sandbox_starts_lazily_with_defaults(gateway: Gateway) -> None:
    defaults = SandboxDefaults(
        profile_ids=("default",), tags=("job-1",), environment_variables={"A": "1"}
    )
    with Session(defaults) as session:
        sb = session.sandbox(tags=["extra"])
        assert sb.sandbox_id is None
        assert gateway.servicer.calls == []
        assert sb.exec(["echo", "hi"]).result().stdout == "hi\n"
        assert methods(gateway) == ["Start", "Get", "StreamExec", "StreamExec"]
        start = gateway.servicer.requests("Start")[0]
        assert list(start.profile_ids) == ["default"]
        assert list(start.tags) == ["job-1", "extra"]
        assert dict(start.environment_variables) == {"A": "1"}
        unused = session.sandbox()
        assert session.sandbox_count == 2
    # Leaving the block stopped the started sandbox; the unused one needed no RPC.
    assert [r.sandbox_id for r in gateway.servicer.requests("Stop")] == ["sb-1"]
    assert len(gateway.servicer.requests("Start")) == 1
    assert sb.status is SandboxStatus.COMPLETED
    assert unused.sandbox_id is None
    assert session.sandbox_count == 0


def test_closed_session_refuses_new_sandboxes(gateway: Gateway) -> None:
    session = Session()
    session.close().result()
    with pytest.raises(SandboxError, match="closed"):
        session.sandbox()


def test_unstarted_sandbox_refuses_ops_after_close(gateway: Gateway) -> None:
    session = Session()
    sb = session.sandbox()
    session.close().result()
    from cwsandbox import SandboxNotRunningError

    with pytest.raises(SandboxNotRunningError):
        sb.exec(["echo"]).result()
    assert gateway.servicer.calls == []


def test_close_stops_all_concurrently_and_reports_failures(gateway: Gateway) -> None:
    session = Session()
    boxes = [session.sandbox() for _ in range(3)]
    for sb in boxes:
        sb.start().result()
    gateway.servicer.fail("Stop", failure(grpc.StatusCode.INTERNAL, "boom"))
    with pytest.raises(SandboxError, match="boom"):
        session.close().result()
    assert len(gateway.servicer.requests("Stop")) == 3


def test_session_list_adds_default_tags(gateway: Gateway) -> None:
    gateway.servicer.add_box(tags=["job-1", "a"])
    gateway.servicer.add_box(tags=["a"])
    session = Session(SandboxDefaults(tags=("job-1",)))
    found = session.list(tags=["a"]).result()
    assert [s.sandbox_id for s in found] == ["sb-1"]
    assert list(gateway.servicer.requests("List")[0].tags) == ["job-1", "a"]
    assert session.sandbox_count == 0
    session.list(adopt=True).result()
    assert session.sandbox_count == 1
    session.close().result()
    assert [r.sandbox_id for r in gateway.servicer.requests("Stop")] == ["sb-1"]


def test_from_id_and_adopt(gateway: Gateway) -> None:
    gateway.servicer.add_box()
    session = Session()
    sb = session.from_id("sb-1").result()
    assert sb.status is SandboxStatus.RUNNING
    other = Sandbox.run()
    session.adopt(other)
    session.adopt(other)  # adopting twice owns it once
    assert session.sandbox_count == 2
    session.from_id("sb-1", adopt=False).result()
    assert session.sandbox_count == 2
    session.close().result()
    assert sorted(r.sandbox_id for r in gateway.servicer.requests("Stop")) == ["sb-1", "sb-2"]


def test_atexit_cleanup_stops_open_sessions(gateway: Gateway) -> None:
    session = Session(SandboxDefaults(tags=("atexit",)))
    session.sandbox().start().result()
    closed = Session()
    closed.close().result()
    assert session in _OPEN and closed not in _OPEN
    _close_open_sessions()
    assert len(gateway.servicer.requests("Stop")) == 1
    assert session not in _OPEN


def test_async_session(gateway: Gateway) -> None:
    async def main() -> str:
        async with Session() as session:
            sb = session.sandbox()
            result = await sb.exec(["echo", "async"])
            return result.stdout

    assert asyncio.run(main()) == "async\n"
    assert len(gateway.servicer.requests("Stop")) == 1


def test_session_from_mapping_and_sandbox_session(gateway: Gateway) -> None:
    session = Sandbox.session({"tags": ["m"], "container_image": "img"})
    assert isinstance(session, Session)
    assert session.defaults.tags == ("m",)
    session.sandbox().start().result()
    assert gateway.servicer.requests("Start")[0].container_image == "img"
    session.close().result()
    with pytest.raises(TypeError):
        Session({"tagz": ["m"]})


def test_interpreter_exit_stops_session_sandboxes(gateway: Gateway) -> None:
    import os
    import subprocess
    import sys

    script = (
        "from cwsandbox import Session\n"
        "s = Session()\n"
        "s.sandbox().start().result()\n"
        "s.sandbox()\n"
        "raise SystemExit(3)\n"
    )
    env = {**os.environ, "CWSANDBOX_BASE_URL": gateway.url}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert methods(gateway) == ["Start", "Stop", "Get", "Get"]
