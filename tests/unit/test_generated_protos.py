"""The committed generated protobuf code matches proto/ (fails when not regenerated)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sandboxd_protocol.v1beta2 import discovery_pb2, gateway_pb2, streaming_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wire_numbers_that_clients_depend_on() -> None:
    """A few field numbers and enum values from protocol/v1beta2.md Appendix A."""
    start = gateway_pb2.StartSandboxRequest.DESCRIPTOR.fields_by_name
    assert start["profile_ids"].number == 20
    assert start["resource_limits"].number == 31
    assert start["profile_names"].number == 33
    get = gateway_pb2.GetSandboxResponse.DESCRIPTOR.fields_by_name
    assert get["exit_code"].number == 13 and get["exit_code"].has_presence
    assert gateway_pb2.SANDBOX_STATUS_TERMINATING == 9
    assert gateway_pb2.SANDBOX_STATUS_PENDING == 6
    runner = discovery_pb2.AvailableRunner.DESCRIPTOR.fields_by_name
    assert runner["resources"].number == 6 and runner["is_shared"].number == 9
    out = streaming_pb2.ExecStreamOutput
    assert out.STREAM_TYPE_STDERR == 2
    assert streaming_pb2.ExecStreamResponse.DESCRIPTOR.fields_by_name["ready"].number == 4
    assert discovery_pb2.DESCRIPTOR.package == "coreweave.sandbox.v1beta2"
