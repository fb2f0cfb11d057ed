"""The v1 protos carry the wire numbers protocol/v1.md Appendix A gives (spot checks).

The full field-by-field comparison with the official 1.22.0 wheel's descriptors runs in
``tests/e2e/test_official_v1_wire.py`` (it needs that wheel in its own virtualenv).
"""

from __future__ import annotations

from sandboxd_protocol.v1 import discovery_pb2, sandbox_pb2


def test_state_numbers_differ_from_v1beta2_where_the_spec_says() -> None:
    assert sandbox_pb2.STATE_TERMINATING == 5
    assert sandbox_pb2.STATE_TERMINATED == 6
    assert sandbox_pb2.STATE_PENDING == 7
    assert sandbox_pb2.STATE_PAUSED == 8
    assert sandbox_pb2.STATE_PREPARING == 9


def test_renumbered_messages() -> None:
    runner = discovery_pb2.AvailableRunner.DESCRIPTOR.fields_by_name
    assert runner["connected_at"].number == 7 and runner["organization_id"].number == 9
    listing = discovery_pb2.ListAvailableRunnersRequest.DESCRIPTOR.fields_by_name
    assert listing["healthy_only"].number == 4 and listing["service_visibility"].number == 8
    frames = sandbox_pb2.ExecStreamResponse.DESCRIPTOR.fields_by_name
    assert [frames[n].number for n in ("ready", "output", "exit", "error")] == [1, 2, 3, 4]
    stdin = sandbox_pb2.ExecStreamRequest.DESCRIPTOR.fields_by_name["stdin"]
    assert stdin.number == 2 and stdin.message_type is None  # raw bytes in v1
    status = sandbox_pb2.SandboxStatus.DESCRIPTOR.fields_by_name
    assert status["exit_code"].number == 9 and status["exit_code"].has_presence
    delete = sandbox_pb2.DeleteSandboxRequest.DESCRIPTOR.fields_by_name
    assert delete["grace_period_seconds"].number == 2 and delete["allow_missing"].number == 5
    network = sandbox_pb2.NetworkOptions.DESCRIPTOR.fields_by_name
    assert network["deny_egress"].number == 3 and network["deny_egress"].has_presence
    assert discovery_pb2.DESCRIPTOR.package == "coreweave.sandbox.v1"
