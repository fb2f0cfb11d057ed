"""The first exec after Start, where the server offers to hold it (sandboxd's extension).

Runs against the in-process stand-in gateway (client-side unit tests only), which plays a
server that offers the extension and answers the waiting exec as scripted. The real control
plane is tested end to end in ``tests/e2e/test_exec_waits_for_start.py``. What is pinned
here is the client's rule: an answer without the sandbox header whose error says nothing ran
is asked about with Get and sent again, and any other error (the command may have run) is
the exec's, never sent twice. Without the offer, the classic Get comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cwsandbox import Sandbox, SandboxExecutionError, SandboxFailedError, SandboxStatus
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import Gateway, canned_exec

OFFER = (("sandboxd-features", "exec-waits-running"),)
WAIT = ("sandboxd-exec-wait-running", "1")


def refusing_first(code: str) -> Any:
    """An exec script whose first call is refused in-band with ``code``, then canned."""
    calls = iter(range(1_000_000))

    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        if next(calls) == 0:
            yield st.ExecStreamResponse(error=st.ExecStreamError(code=code, message="no"))
            return
        yield from canned_exec(init, requests)

    return script


def exec_calls(gateway: Gateway) -> list[Any]:
    """The StreamExec calls' first frames (init), in order."""
    return [c for c in gateway.servicer.recorded("StreamExec") if c.request.HasField("init")]


def test_without_the_offer_a_get_comes_first(gateway: Gateway) -> None:
    sb = Sandbox.run()
    assert sb.exec(["echo", "hi"]).result().stdout == "hi\n"
    (call,) = exec_calls(gateway)
    assert WAIT[0] not in call.metadata
    assert len(gateway.servicer.recorded("Get")) == 1


@pytest.mark.parametrize("code", ["SANDBOX_NOT_RUNNING", "SANDBOX_NOT_FOUND"])
def test_a_refusal_that_ran_nothing_is_asked_about_and_sent_again(
    gateway: Gateway, code: str
) -> None:
    gateway.servicer.start_trailers = OFFER
    gateway.servicer.exec_script = refusing_first(code)
    sb = Sandbox.run()
    assert sb.exec(["echo", "hi"]).result().stdout == "hi\n"
    first, second = exec_calls(gateway)
    assert first.metadata.get(WAIT[0]) == WAIT[1]  # sent at once, asking to be held
    assert WAIT[0] not in second.metadata  # after the Get: the classic exec
    (get,) = gateway.servicer.recorded("Get")
    assert first.at < get.at < second.at
    assert sb.status is SandboxStatus.RUNNING


def test_an_error_that_may_have_run_the_command_is_not_sent_again(gateway: Gateway) -> None:
    gateway.servicer.start_trailers = OFFER
    gateway.servicer.exec_script = refusing_first("RUNNER_UNAVAILABLE")
    sb = Sandbox.run()
    with pytest.raises(SandboxExecutionError) as caught:
        sb.exec(["echo", "hi"]).result()
    assert caught.value.reason == "RUNNER_UNAVAILABLE"
    assert len(exec_calls(gateway)) == 1
    assert gateway.servicer.recorded("Get") == []


def test_a_start_that_failed_raises_as_without_the_offer(gateway: Gateway) -> None:
    gateway.servicer.start_trailers = OFFER
    gateway.servicer.exec_script = refusing_first("SANDBOX_NOT_RUNNING")
    gateway.servicer.start_script = [(gw.SANDBOX_STATUS_FAILED, None)]
    gateway.servicer.failed_reason = "exec /nope: no such file"
    sb = Sandbox.run()
    with pytest.raises(SandboxFailedError, match="no such file"):
        sb.exec(["true"]).result()
    assert len(exec_calls(gateway)) == 1
