"""Our client's first exec after Start waits on the server, not behind a Get (issue 9).

Right after Start the sandbox is still being created. sandboxd says in Start's trailing
metadata that it can hold an exec until the sandbox runs, and our client then sends the exec
at once (``sandboxd.controlplane.call_headers``). What a user sees must not change: the
command runs exactly once, the handle knows what a Get would have told it, a sandbox that
fails to start raises ``SandboxFailedError`` naming why, and the extension is no way around
tenancy: another organization's sandbox is as unknown with it as without.
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cwsandbox import Sandbox, SandboxFailedError, SandboxStatus
from sandboxd.controlplane.call_headers import (
    EXEC_WAITS_FEATURE,
    FEATURES_HEADER,
    SANDBOX_HEADER,
    WAIT_RUNNING_HEADER,
)
from sandboxd.controlplane.streaming import NO_STDIN_HEADER
from sandboxd_protocol.v1beta2 import gateway_pb2, gateway_pb2_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from sandboxd_protocol.v1beta2 import streaming_pb2_grpc as st_grpc
from tests.e2e.conftest import Platform
from tests.support.processes import printed


def rpc_count(platform: Platform, method: str) -> float:
    """How many ``method`` calls the control plane has answered, from its metrics."""
    url = printed(platform.proc, "SANDBOXD_METRICS_URL")
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "sandboxd_grpc_server_handled_total"
                and sample.labels.get("method") == method
            ):
                total += sample.value
    return total


def test_the_first_exec_needs_no_get_and_the_handle_learns_the_sandbox(
    quiet_platform: Platform,
) -> None:
    gets = rpc_count(quiet_platform, "Get")
    with Sandbox.run() as sb:
        result = sb.exec(["sh", "-c", "echo ran >> /tmp/runs; cat /tmp/runs"]).result()
        assert result.returncode == 0
        assert result.stdout == "ran\n"  # the command ran once, though it was sent early
        assert rpc_count(quiet_platform, "Get") == gets  # no Get waited for RUNNING
        # What the exec's header said is what a Get would have: the handle is up to date.
        assert sb.status is SandboxStatus.RUNNING
        assert sb.runner_id == quiet_platform.runner_id
        assert sb.started_at is not None
        seen = (sb.runner_id, sb.profile_id, sb.runner_group_id)
        assert sb.get_status() is SandboxStatus.RUNNING
        assert (sb.runner_id, sb.profile_id, sb.runner_group_id) == seen
        assert sb.exec(["cat", "/tmp/runs"]).result().stdout == "ran\n"


def test_stdin_right_after_start(quiet_platform: Platform) -> None:
    with Sandbox.run() as sb:
        process = sb.exec(["cat"], stdin=True)
        assert process.stdin is not None
        process.stdin.write(b"to the sandbox")
        process.stdin.close()
        assert process.result().stdout == "to the sandbox"


def test_a_start_that_fails_raises_why(quiet_platform: Platform) -> None:
    sb = Sandbox.run("/no/such/program")
    try:
        with pytest.raises(SandboxFailedError) as caught:
            sb.exec(["true"]).result()
        assert "/no/such/program" in str(caught.value), caught.value
        assert sb.status is SandboxStatus.FAILED
    finally:
        sb.stop(missing_ok=True).result()


def _raw_exec(
    platform: Platform, key: str, sandbox_id: str
) -> tuple[grpc.StatusCode, tuple[tuple[str, object], ...]]:
    """A StreamExec with the wait header, by hand; its status and initial metadata."""
    with grpc.insecure_channel(platform.target) as channel:
        call = st_grpc.GatewayStreamingServiceStub(channel).StreamExec(
            iter([st.ExecStreamRequest(init=st.ExecStreamInit(sandbox_id=sandbox_id,
                                                               command=["true"]))]),
            metadata=(("authorization", f"Bearer {key}"), (WAIT_RUNNING_HEADER, "1")),
            timeout=30,
        )  # fmt: skip
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        return call.code(), tuple(call.initial_metadata() or ())


def test_the_header_is_no_way_into_another_organization(quiet_platform: Platform) -> None:
    stranger = quiet_platform.member_key("elsewhere")
    with Sandbox.run() as sb:
        assert sb.sandbox_id is not None
        code, headers = _raw_exec(quiet_platform, stranger, sb.sandbox_id)
        assert code is grpc.StatusCode.NOT_FOUND
        assert SANDBOX_HEADER not in dict(headers)  # nothing of the sandbox is told
        # The owner, by hand, gets the sandbox in the header and the exec runs.
        code, headers = _raw_exec(quiet_platform, quiet_platform.api_key, sb.sandbox_id)
        assert code is grpc.StatusCode.OK
        seen = gateway_pb2.GetSandboxResponse.FromString(dict(headers)[SANDBOX_HEADER])  # type: ignore[arg-type]
        assert seen.sandbox_id == sb.sandbox_id
        assert seen.sandbox_status == gateway_pb2.SANDBOX_STATUS_RUNNING
    code, _ = _raw_exec(quiet_platform, quiet_platform.api_key, "no-such-sandbox")
    assert code is grpc.StatusCode.NOT_FOUND


def test_start_offers_the_extension(quiet_platform: Platform) -> None:
    with grpc.insecure_channel(quiet_platform.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        auth = (("authorization", f"Bearer {quiet_platform.api_key}"),)
        response, call = stub.Start.with_call(
            gateway_pb2.StartSandboxRequest(command="sleep", args=["60"]),
            metadata=auth,
            timeout=30,
        )
        try:
            assert (FEATURES_HEADER, EXEC_WAITS_FEATURE) in tuple(call.trailing_metadata())
        finally:
            stub.Stop(
                gateway_pb2.StopSandboxRequest(sandbox_id=response.sandbox_id),
                metadata=auth,
                timeout=30,
            )


def test_an_exec_sent_before_the_sandbox_runs_gets_its_header_and_its_frames_only(
    quiet_platform: Platform,
) -> None:
    """Sent right after Start (the runner holds it): the header, then output and exit.

    The runner says when the command runs (``OpenExec.announce_running``) so the header can
    go out while it runs; that word is the control plane's alone and never reaches the
    client, whose frames are exactly those of any exec without stdin.
    """
    auth = (("authorization", f"Bearer {quiet_platform.api_key}"),)
    with grpc.insecure_channel(quiet_platform.target) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        started = gateway.Start(
            gateway_pb2.StartSandboxRequest(command="sleep", args=["60"]), metadata=auth, timeout=30
        )
        try:
            for round_ in range(3):
                init = st.ExecStreamInit(
                    sandbox_id=started.sandbox_id, command=["sh", "-c", f"echo run{round_}"]
                )
                call = st_grpc.GatewayStreamingServiceStub(channel).StreamExec(
                    iter([st.ExecStreamRequest(init=init)]),
                    metadata=(*auth, (WAIT_RUNNING_HEADER, "1"), (NO_STDIN_HEADER, "1")),
                    timeout=30,
                )
                frames = list(call)
                assert [f.WhichOneof("response") for f in frames] == ["output", "exit"]
                assert frames[0].output.data == f"run{round_}\n".encode()
                assert frames[1].exit.exit_code == 0
                seen = gateway_pb2.GetSandboxResponse.FromString(
                    dict(call.initial_metadata())[SANDBOX_HEADER]  # type: ignore[arg-type]
                )
                assert seen.sandbox_status == gateway_pb2.SANDBOX_STATUS_RUNNING
        finally:
            gateway.Stop(
                gateway_pb2.StopSandboxRequest(sandbox_id=started.sandbox_id),
                metadata=auth,
                timeout=30,
            )
