"""``read_file`` / ``write_file`` over unary RetrieveFile / AddFile (protocol §6).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import grpc
import pytest

from cwsandbox import (
    CWSandboxAuthenticationError,
    Sandbox,
    SandboxFileError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from tests.unit.client.sandbox.gateway_standin import Gateway, failure


def test_roundtrip_and_request_fields(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.write_file("/work/a.txt", b"hello\x00").result()
    sb.write_file("/work/empty", b"").result()
    assert sb.read_file("/work/a.txt").result() == b"hello\x00"
    assert sb.read_file("/work/empty").result() == b""
    add = gateway.servicer.recorded("AddFile")[0]
    assert (add.request.sandbox_id, add.request.filepath) == ("sb-1", "/work/a.txt")
    assert add.request.max_timeout_seconds == 300
    sb.read_file("/work/a.txt", timeout_seconds=12).result()
    get = gateway.servicer.recorded("RetrieveFile")[-1]
    assert get.request.max_timeout_seconds == 12
    assert get.time_remaining is not None and 11 < get.time_remaining <= 12.2


def test_success_false(gateway: Gateway) -> None:
    sb = Sandbox.run()
    gateway.servicer.file_failure = "success_false"
    with pytest.raises(SandboxFileError, match="Failed to read file '/x': no such file") as info:
        sb.read_file("/x").result()
    assert info.value.filepath == "/x"
    with pytest.raises(SandboxFileError, match="Failed to write file '/x'"):
        sb.write_file("/x", b"1").result()


@pytest.mark.parametrize(
    "reason",
    ["CWSANDBOX_FILE_NOT_FOUND", "CWSANDBOX_FILE_IS_DIRECTORY", "CWSANDBOX_FILE_PERMISSION_DENIED"],
)
def test_file_reasons(gateway: Gateway, reason: str) -> None:
    sb = Sandbox.run()
    gateway.servicer.file_failure = reason
    with pytest.raises(SandboxFileError) as info:
        sb.read_file("/etc/shadow").result()
    assert (info.value.reason, info.value.filepath) == (reason, "/etc/shadow")
    # A PERMISSION_DENIED with a file reason is a file error, not an auth error.
    with pytest.raises(SandboxFileError):
        sb.write_file("/etc/shadow", b"x").result()


def test_missing_file_default_reason(gateway: Gateway) -> None:
    with pytest.raises(SandboxFileError) as info:
        Sandbox.run().read_file("/nope").result()
    assert info.value.reason == "CWSANDBOX_FILE_NOT_FOUND"


def test_bare_not_found_means_sandbox_gone(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.wait()
    gateway.servicer.fail("RetrieveFile", failure(grpc.StatusCode.NOT_FOUND, "gone"))
    with pytest.raises(SandboxNotFoundError):
        sb.read_file("/x").result()
    gateway.servicer.fail("AddFile", failure(grpc.StatusCode.PERMISSION_DENIED, "no"))
    with pytest.raises(CWSandboxAuthenticationError):
        sb.write_file("/x", b"").result()


def test_bad_arguments(gateway: Gateway) -> None:
    sb = Sandbox.run()
    with pytest.raises(TypeError, match="encode"):
        sb.write_file("/x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sb.read_file("")
    assert gateway.servicer.requests("AddFile") == []


def test_file_ops_on_stopped_sandbox(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.stop().result()
    with pytest.raises(SandboxNotRunningError):
        sb.read_file("/x").result()
    assert gateway.servicer.requests("RetrieveFile") == []
