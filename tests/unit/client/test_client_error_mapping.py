"""Translation of real ``grpc.RpcError``s (from the stand-in server) into our exceptions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from cwsandbox import exceptions as exc
from cwsandbox._error_mapping import discovery_error, parse_rpc_error, sandbox_error
from tests.unit.client.client_standin import bad_request, error_info, retry_info

MakeError = Callable[..., grpc.RpcError]
C = grpc.StatusCode
URL = "http://127.0.0.1:50051"


def test_parse_plain_status(rpc_error: MakeError) -> None:
    failure = parse_rpc_error(rpc_error(C.INTERNAL, "kaput"))
    assert failure.code is C.INTERNAL
    assert failure.details == "kaput"
    assert (failure.reason, failure.metadata, failure.retry_delay) == (None, {}, None)


def test_parse_rich_details(rpc_error: MakeError) -> None:
    err = rpc_error(
        C.INVALID_ARGUMENT,
        "bad request",
        error_info("CWSANDBOX_INVALID_ARGUMENT", field="gpu_type"),
        retry_info(3),
        bad_request(("gpu_type", "unknown GPU type 'z100'"), ("page_size", "")),
    )
    failure = parse_rpc_error(err)
    assert failure.reason == "CWSANDBOX_INVALID_ARGUMENT"
    assert failure.trusted_reason == "CWSANDBOX_INVALID_ARGUMENT"
    assert failure.metadata == {"field": "gpu_type"}
    assert failure.retry_delay == timedelta(seconds=3)
    assert failure.description == (
        "bad request (invalid fields: gpu_type: unknown GPU type 'z100'; page_size)"
    )


def test_first_error_info_with_a_reason_wins(rpc_error: MakeError) -> None:
    err = rpc_error(C.INTERNAL, "x", error_info(""), error_info("FIRST"), error_info("SECOND"))
    assert parse_rpc_error(err).reason == "FIRST"


def test_untrusted_domain_is_reported_but_not_trusted(rpc_error: MakeError) -> None:
    err = rpc_error(C.FAILED_PRECONDITION, "x", error_info("CWSANDBOX_RUNNER_NOT_FOUND", "evil"))
    failure = parse_rpc_error(err)
    assert failure.reason == "CWSANDBOX_RUNNER_NOT_FOUND"
    assert failure.trusted_reason is None
    mapped = discovery_error(err, target=URL, runner_id="r1")
    assert type(mapped) is exc.DiscoveryError
    assert mapped.reason == "CWSANDBOX_RUNNER_NOT_FOUND"


def test_garbage_details_are_ignored(rpc_error: MakeError) -> None:
    failure = parse_rpc_error(rpc_error(C.UNAVAILABLE, "garbage: trailer"))
    assert failure.code is C.UNAVAILABLE
    assert failure.reason is None


def test_bare_rpc_error_is_unknown() -> None:
    failure = parse_rpc_error(grpc.RpcError())
    assert failure.code is C.UNKNOWN
    assert type(discovery_error(grpc.RpcError(), target=URL)) is exc.DiscoveryError


# --- discovery ----------------------------------------------------------------------------


def test_runner_not_found_by_code(rpc_error: MakeError) -> None:
    mapped = discovery_error(rpc_error(C.NOT_FOUND, "nope"), target=URL, runner_id="r9")
    assert isinstance(mapped, exc.RunnerNotFoundError)
    assert mapped.runner_id == "r9"
    assert str(mapped) == "runner 'r9' not found"


def test_runner_not_found_by_trusted_reason(rpc_error: MakeError) -> None:
    err = rpc_error(C.FAILED_PRECONDITION, "x", error_info("CWSANDBOX_RUNNER_NOT_FOUND"))
    mapped = discovery_error(err, target=URL, runner_id="r9")
    assert isinstance(mapped, exc.RunnerNotFoundError)
    assert mapped.reason == "CWSANDBOX_RUNNER_NOT_FOUND"


@pytest.mark.parametrize(
    "details",
    [(), (error_info("CWSANDBOX_PROFILE_NOT_FOUND"),), (error_info("CWSANDBOX_RUNNER_NOT_FOUND"),)],
)
def test_profile_not_found(rpc_error: MakeError, details: tuple[object, ...]) -> None:
    err = rpc_error(C.NOT_FOUND, "nope", *details)
    mapped = discovery_error(err, target=URL, profile_name="p", runner_id="r1")
    assert isinstance(mapped, exc.ProfileNotFoundError)
    assert (mapped.profile_name, mapped.runner_id) == ("p", "r1")
    assert str(mapped) == "profile 'p' not found on runner 'r1'"


def test_profile_reason_wins_over_code(rpc_error: MakeError) -> None:
    err = rpc_error(C.INTERNAL, "x", error_info("CWSANDBOX_PROFILE_NOT_FOUND"))
    assert isinstance(discovery_error(err, target=URL, profile_name="p"), exc.ProfileNotFoundError)


@pytest.mark.parametrize("code", [C.UNAUTHENTICATED, C.PERMISSION_DENIED])
def test_auth_codes(rpc_error: MakeError, code: grpc.StatusCode) -> None:
    mapped = discovery_error(rpc_error(code, "no key"), target=URL)
    assert type(mapped) is exc.CWSandboxAuthenticationError
    assert URL in str(mapped)


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (C.UNAVAILABLE, f"cannot reach sandboxd control plane at {URL}"),
        (C.DEADLINE_EXCEEDED, f"timed out waiting for the sandboxd control plane at {URL}"),
        (C.UNIMPLEMENTED, f"the server at {URL} does not implement"),
    ],
)
def test_connectivity_errors_name_the_url(
    rpc_error: MakeError, code: grpc.StatusCode, phrase: str
) -> None:
    mapped = discovery_error(rpc_error(code, "details"), target=URL, operation="list_runners")
    assert type(mapped) is exc.DiscoveryError
    assert phrase in str(mapped)


@pytest.mark.parametrize("code", [C.RESOURCE_EXHAUSTED, C.INTERNAL, C.INVALID_ARGUMENT])
def test_everything_else_is_discovery_error(rpc_error: MakeError, code: grpc.StatusCode) -> None:
    err = rpc_error(
        code, "why", error_info("CWSANDBOX_X", k="v"), retry_info(1), bad_request(("f", "d"))
    )
    mapped = discovery_error(err, target=URL, operation="list_profiles")
    assert type(mapped) is exc.DiscoveryError
    assert str(mapped) == f"list_profiles failed ({code.name}): why (invalid fields: f: d)"
    assert (mapped.reason, mapped.metadata, mapped.retry_delay) == (
        "CWSANDBOX_X",
        {"k": "v"},
        timedelta(seconds=1),
    )


def test_not_found_without_context_is_discovery_error(rpc_error: MakeError) -> None:
    assert type(discovery_error(rpc_error(C.NOT_FOUND, "x"), target=URL)) is exc.DiscoveryError


# --- sandboxes ----------------------------------------------------------------------------

REASONS = [
    ("CWSANDBOX_FILE_NOT_FOUND", exc.SandboxFileError),
    ("CWSANDBOX_FILE_TOO_LARGE", exc.SandboxFileError),
    ("CWSANDBOX_SANDBOX_NOT_FOUND", exc.SandboxNotFoundError),
    ("CWSANDBOX_COMMAND_TIMEOUT", exc.SandboxCommandTimeoutError),
    ("CWSANDBOX_RUNNER_UNAVAILABLE", exc.SandboxUnavailableError),
    ("CWSANDBOX_BACKEND_UNAVAILABLE", exc.SandboxUnavailableError),
    ("CWSANDBOX_FSS_NOT_FOUND", exc.SnapshotNotFoundError),
    ("CWSANDBOX_FSS_NOT_READY", exc.SnapshotNotReadyError),
    ("CWSANDBOX_FSS_BUCKET_MISMATCH", exc.SnapshotBucketMismatchError),
    ("CWSANDBOX_FSS_CREATE_FAILED", exc.SandboxSnapshotError),
    ("CWSANDBOX_FSS_WAIT_TIMEOUT", exc.SnapshotWaitTimeoutError),
    ("CWSANDBOX_FSS_INFLIGHT_LIMIT", exc.SnapshotBackendThrottledError),
]


@pytest.mark.parametrize(("reason", "expected"), REASONS)
def test_sandbox_trusted_reasons(rpc_error: MakeError, reason: str, expected: type) -> None:
    # PERMISSION_DENIED would be an auth error without the reason: the reason must win.
    err = rpc_error(C.PERMISSION_DENIED, "x", error_info(reason, filepath="/a", sandbox_id="s"))
    mapped = sandbox_error(err, operation="read_file")
    assert type(mapped) is expected
    assert mapped.reason == reason


def test_sandbox_file_and_id_context(rpc_error: MakeError) -> None:
    err = rpc_error(C.NOT_FOUND, "x", error_info("CWSANDBOX_FILE_NOT_FOUND", filepath="/srv"))
    from_meta = sandbox_error(err, operation="read_file")
    assert isinstance(from_meta, exc.SandboxFileError)
    assert from_meta.filepath == "/srv"
    known = sandbox_error(err, operation="read_file", filepath="/mine")
    assert isinstance(known, exc.SandboxFileError)
    assert known.filepath == "/mine"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (C.NOT_FOUND, exc.SandboxNotFoundError),
        (C.CANCELLED, exc.SandboxNotRunningError),
        (C.DEADLINE_EXCEEDED, exc.SandboxRequestTimeoutError),
        (C.UNAVAILABLE, exc.SandboxUnavailableError),
        (C.RESOURCE_EXHAUSTED, exc.SandboxResourceExhaustedError),
        (C.UNAUTHENTICATED, exc.CWSandboxAuthenticationError),
        (C.PERMISSION_DENIED, exc.CWSandboxAuthenticationError),
        (C.INVALID_ARGUMENT, exc.SandboxError),
        (C.FAILED_PRECONDITION, exc.SandboxError),
        (C.INTERNAL, exc.SandboxError),
    ],
)
def test_sandbox_codes(rpc_error: MakeError, code: grpc.StatusCode, expected: type) -> None:
    mapped = sandbox_error(rpc_error(code, "why"), operation="start", sandbox_id="sb1")
    assert type(mapped) is expected


def test_sandbox_not_found_context(rpc_error: MakeError) -> None:
    mapped = sandbox_error(rpc_error(C.NOT_FOUND, "gone"), operation="get", sandbox_id="sb1")
    assert isinstance(mapped, exc.SandboxNotFoundError)
    assert mapped.sandbox_id == "sb1"
    assert str(mapped) == "sandbox 'sb1' not found: gone"


def test_snapshot_call_not_found(rpc_error: MakeError) -> None:
    mapped = sandbox_error(
        rpc_error(C.NOT_FOUND, "gone"),
        operation="get_snapshot",
        file_system_snapshot_id="fs1",
        snapshot_call=True,
    )
    assert isinstance(mapped, exc.SnapshotNotFoundError)
    assert mapped.file_system_snapshot_id == "fs1"


def test_untrusted_sandbox_reason_falls_back_to_code(rpc_error: MakeError) -> None:
    err = rpc_error(C.PERMISSION_DENIED, "x", error_info("CWSANDBOX_FILE_NOT_FOUND", "other.org"))
    assert type(sandbox_error(err, operation="read_file")) is exc.CWSandboxAuthenticationError
