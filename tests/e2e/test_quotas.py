"""Per-organization quotas from the configuration file, on a real ``sandboxd up``.

Each quota (running sandboxes, total CPU limits, total memory limits, concurrent execs) trips
with RESOURCE_EXHAUSTED and a reason naming it; the organization's sandboxes keep running and
stay usable, other organizations are not affected, and room made under the quota is usable
at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from tests.e2e.conftest import Platform, start_platform
from tests.support.processes import admin_call, keyed_channel

QUOTAS = """
quotas:
  organizations:
    team-run: {running_sandboxes: 2}
    team-cpu: {cpu: "1"}          # locked-down sandboxes have a 500m CPU limit
    team-mem: {memory: 1Gi}       # ... and a 512Mi memory limit
    team-exec: {concurrent_execs: 1}
"""


@pytest.fixture(scope="module")
def platform_with_quotas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = tmp_path_factory.mktemp("quota-config") / "platform.yaml"
    default = resources.files("sandboxd.config").joinpath("default.yaml").read_text()
    config.write_text(default + QUOTAS)
    yield from start_platform(tmp_path_factory, "--config", str(config))


class Org:
    """One organization's member key and stubs."""

    def __init__(self, platform: Platform, organization: str) -> None:
        secret = admin_call(
            platform.target,
            platform.api_key,
            "CreateApiKey",
            admin_pb2.CreateApiKeyRequest(organization=organization),
            admin_pb2.CreateApiKeyResponse,
        ).secret
        self.channel = keyed_channel(platform.target, secret)
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.streaming = streaming_pb2_grpc.GatewayStreamingServiceStub(self.channel)
        self.started: list[str] = []

    def start(self) -> str:
        response = self.gateway.Start(
            g.StartSandboxRequest(
                command="/bin/sh",
                args=["-c", 'trap "exit 0" TERM; sleep infinity & wait'],
                profile_names=["locked-down"],
            ),
            timeout=60,
        )
        self.started.append(response.sandbox_id)
        deadline = time.monotonic() + 60
        while self.status(response.sandbox_id) != g.SANDBOX_STATUS_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return response.sandbox_id

    def status(self, sandbox_id: str) -> int:
        request = g.GetSandboxRequest(sandbox_id=sandbox_id)
        return self.gateway.Get(request, timeout=30).sandbox_status

    def running(self) -> set[str]:
        listed = self.gateway.List(g.ListSandboxesRequest(), timeout=30).sandboxes
        return {s.sandbox_id for s in listed if s.sandbox_status == g.SANDBOX_STATUS_RUNNING}

    def stop(self, sandbox_id: str) -> None:
        request = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=1)
        self.gateway.Stop(request, timeout=60)

    def exec(self, sandbox_id: str, *command: str, until: threading.Event | None = None) -> Any:
        """A StreamExec call; its request side stays open until ``until`` is set (if given)."""
        init = streaming_pb2.ExecStreamRequest(
            init=streaming_pb2.ExecStreamInit(sandbox_id=sandbox_id, command=list(command))
        )

        def requests() -> Iterator[Any]:
            yield init
            if until is not None:
                until.wait(60)  # then half-close: stdin EOF

        return self.streaming.StreamExec(requests(), timeout=60)

    def close(self) -> None:
        for sandbox_id in self.started:
            self.gateway.Delete(g.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=60)
        self.channel.close()


def refusal(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    info = error_details_pb2.ErrorInfo()
    for detail in status_pb2.Status.FromString(trailers["grpc-status-details-bin"]).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
    return error.code(), info.reason, dict(info.metadata)  # type: ignore[attr-defined]


@pytest.fixture
def org(platform_with_quotas: Platform, request: pytest.FixtureRequest) -> Iterator[Org]:
    found = Org(platform_with_quotas, request.param)
    yield found
    found.close()


@pytest.mark.parametrize(
    ("org", "quota"),
    [("team-run", "running_sandboxes"), ("team-cpu", "cpu"), ("team-mem", "memory")],
    indirect=["org"],
)
def test_a_start_over_a_quota_is_refused_and_nothing_is_lost(org: Org, quota: str) -> None:
    first, second = org.start(), org.start()
    code, reason, metadata = refusal(org.start)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason == f"CWSANDBOX_{quota.upper()}_QUOTA_EXCEEDED"
    assert metadata["quota"] == quota
    # The organization's sandboxes are all still there, running and usable.
    assert org.running() == {first, second}
    replies = list(org.exec(first, "echo", "alive"))
    assert [r.output.data for r in replies if r.WhichOneof("response") == "output"] == [b"alive\n"]
    # Room made under the quota is usable at once.
    org.stop(first)
    third = org.start()
    assert org.running() == {second, third}


@pytest.mark.parametrize("org", ["team-exec"], indirect=True)
def test_concurrent_execs_over_the_quota_are_refused_until_one_ends(
    org: Org, platform_with_quotas: Platform
) -> None:
    sandbox = org.start()
    release = threading.Event()
    holding = org.exec(sandbox, "cat", until=release)
    assert next(holding).WhichOneof("response") == "ready"
    code, reason, metadata = refusal(lambda: list(org.exec(sandbox, "true")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason == "CWSANDBOX_CONCURRENT_EXECS_QUOTA_EXCEEDED"
    assert (metadata["limit"], metadata["used"]) == ("1", "1")
    # Another organization is not affected by team-exec's quota.
    other = Org(platform_with_quotas, "team-other")
    try:
        mine = other.start()
        assert [r.WhichOneof("response") for r in other.exec(mine, "true")][-1] == "exit"
    finally:
        other.close()
    release.set()  # half-close: cat sees EOF and exits
    assert [r.WhichOneof("response") for r in holding][-1] == "exit"
    deadline = time.monotonic() + 10
    while True:  # the slot is given back as the call ends on the server
        try:
            replies = list(org.exec(sandbox, "true"))
            break
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert replies[-1].exit.exit_code == 0
    assert org.running() == {sandbox}
