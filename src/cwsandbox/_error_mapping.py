"""The one place where ``grpc.RpcError`` becomes a ``cwsandbox.exceptions`` error.

Servers describe failures with a status code plus optional AIP-193 details: a serialized
``google.rpc.Status`` in the binary trailer ``grpc-status-details-bin`` whose ``details``
hold ``ErrorInfo`` (a machine-readable reason), ``RetryInfo`` (how long to wait) and
``BadRequest`` (which request fields were wrong). ``parse_rpc_error`` extracts all of that;
``discovery_error`` and ``sandbox_error`` pick the exception class.

Reasons steer the choice of exception only when their domain is ``cwsandbox.com``, so a
proxy or another service cannot make us misreport an error; the reason, metadata and retry
delay are nevertheless copied onto every exception so users can see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from cwsandbox import exceptions as exc

__all__ = [
    "STATUS_DETAILS_KEY",
    "TRUSTED_DOMAIN",
    "RpcFailure",
    "discovery_error",
    "parse_rpc_error",
    "sandbox_error",
]

TRUSTED_DOMAIN = "cwsandbox.com"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class RpcFailure:
    """Everything a failed RPC told us, in plain Python types."""

    code: grpc.StatusCode
    details: str
    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    retry_delay: timedelta | None = None
    field_violations: tuple[tuple[str, str], ...] = ()

    @property
    def trusted_reason(self) -> str | None:
        """The reason, but only when it comes from the ``cwsandbox.com`` domain."""
        return self.reason if self.domain == TRUSTED_DOMAIN else None

    @property
    def description(self) -> str:
        """The server's message, followed by any invalid request fields it named."""
        text = self.details or self.code.name
        if self.field_violations:
            fields = "; ".join(
                f"{name}: {why}" if why else name for name, why in self.field_violations
            )
            text = f"{text} (invalid fields: {fields})"
        return text

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments every exception takes: reason, metadata, retry_delay."""
        return {"reason": self.reason, "metadata": self.metadata, "retry_delay": self.retry_delay}


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    """Call ``err.<name>()`` if it exists; a bare ``RpcError`` has none of the Call methods."""
    method = getattr(err, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a broken error object must not hide the original failure
        return None


def _status_details_blob(trailers: Any) -> bytes | None:
    if trailers is None:
        return None
    items: Iterable[tuple[str, Any]] = trailers  # sync: namedtuples; aio: Metadata pairs
    for key, value in items:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def parse_rpc_error(err: grpc.RpcError) -> RpcFailure:
    """Extract code, message, reason, metadata, retry delay and field violations from ``err``.

    Works for sync ``grpc.RpcError`` and ``grpc.aio.AioRpcError`` alike. Malformed details
    are ignored rather than raised: the status code alone is still a useful error.
    """
    code = _call_attr(err, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = _call_attr(err, "details")
    message = details if isinstance(details, str) else ""

    blob = _status_details_blob(_call_attr(err, "trailing_metadata"))
    if blob is None:
        return RpcFailure(code=code, details=message)
    status = status_pb2.Status()
    try:
        status.ParseFromString(blob)
    except DecodeError:
        return RpcFailure(code=code, details=message)
    if code is grpc.StatusCode.UNKNOWN and status.code in _CODES_BY_VALUE:
        code = _CODES_BY_VALUE[status.code]

    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = {}
    retry_delay: timedelta | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if reason is None and info.reason:
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            if retry_delay is None and retry.HasField("retry_delay"):
                retry_delay = retry.retry_delay.ToTimedelta()
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return RpcFailure(
        code=code,
        details=message or status.message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_delay=retry_delay,
        field_violations=tuple(violations),
    )


# --- discovery ------------------------------------------------------------------------------

_RUNNER_NOT_FOUND = "CWSANDBOX_RUNNER_NOT_FOUND"
_PROFILE_NOT_FOUND = "CWSANDBOX_PROFILE_NOT_FOUND"
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _auth_error(failure: RpcFailure, target: str) -> exc.CWSandboxAuthenticationError:
    if failure.code is grpc.StatusCode.PERMISSION_DENIED:
        text = f"permission denied by {target}: {failure.description}"
    else:
        text = f"authentication failed at {target}: {failure.description} (check CWSANDBOX_API_KEY)"
    return exc.CWSandboxAuthenticationError(text, **failure.kwargs())


def _connectivity_message(failure: RpcFailure, operation: str, target: str) -> str | None:
    if failure.code is grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach sandboxd control plane at {target}: {failure.description}"
    if failure.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"{operation} timed out waiting for the sandboxd control plane at {target}: "
            f"{failure.description}"
        )
    if failure.code is grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"the server at {target} does not implement {operation} "
            f"(is it a coreweave.sandbox.v1beta2 control plane?): {failure.description}"
        )
    return None


def discovery_error(
    err: grpc.RpcError,
    *,
    target: str,
    operation: str = "discovery",
    runner_id: str | None = None,
    profile_name: str | None = None,
) -> exc.CWSandboxError:
    """Translate an error from a DiscoveryService RPC (protocol §3, §9.3).

    ``profile_name`` marks a profile lookup: NOT_FOUND or a trusted profile/runner-not-found
    reason gives ``ProfileNotFoundError``. Otherwise ``runner_id`` marks a runner lookup:
    NOT_FOUND or ``CWSANDBOX_RUNNER_NOT_FOUND`` gives ``RunnerNotFoundError``. Auth codes
    give ``CWSandboxAuthenticationError``; everything else, including UNAVAILABLE and
    DEADLINE_EXCEEDED (whose messages name ``target``, the base URL), gives ``DiscoveryError``.
    """
    failure = parse_rpc_error(err)
    trusted = failure.trusted_reason
    not_found = failure.code is grpc.StatusCode.NOT_FOUND
    if profile_name is not None and (
        not_found or trusted in (_PROFILE_NOT_FOUND, _RUNNER_NOT_FOUND)
    ):
        where = f" on runner {runner_id!r}" if runner_id is not None else ""
        return exc.ProfileNotFoundError(
            f"profile {profile_name!r} not found{where}",
            profile_name=profile_name,
            runner_id=runner_id,
            **failure.kwargs(),
        )
    if (
        profile_name is None
        and runner_id is not None
        and (not_found or trusted == _RUNNER_NOT_FOUND)
    ):
        return exc.RunnerNotFoundError(
            f"runner {runner_id!r} not found", runner_id=runner_id, **failure.kwargs()
        )
    if failure.code in _AUTH_CODES:
        return _auth_error(failure, target)
    text = _connectivity_message(failure, operation, target)
    if text is None:
        text = f"{operation} failed ({failure.code.name}): {failure.description}"
    return exc.DiscoveryError(text, **failure.kwargs())


# --- sandboxes, files, snapshots -----------------------------------------------------------

_FILE_REASONS = frozenset(
    {
        "CWSANDBOX_FILE_NOT_FOUND",
        "CWSANDBOX_FILE_IS_DIRECTORY",
        "CWSANDBOX_FILE_IO_FAILED",
        "CWSANDBOX_FILE_PERMISSION_DENIED",
        "CWSANDBOX_FILE_TOO_LARGE",
        "CWSANDBOX_FILE_TRUNCATED",
    }
)
_SNAPSHOT_REASONS: dict[str, type[exc.SandboxSnapshotError]] = {
    "CWSANDBOX_FSS_NOT_FOUND": exc.SnapshotNotFoundError,
    "CWSANDBOX_FSS_NOT_READY": exc.SnapshotNotReadyError,
    "CWSANDBOX_FSS_NOT_SUPPORTED": exc.SnapshotNotSupportedError,
    "CWSANDBOX_FSS_SIZE_EXCEEDED": exc.SnapshotSizeExceededError,
    "CWSANDBOX_FSS_QUOTA_EXCEEDED": exc.SnapshotQuotaExceededError,
    "CWSANDBOX_FSS_BUCKET_MISMATCH": exc.SnapshotBucketMismatchError,
    **{
        f"CWSANDBOX_FSS_{name}": exc.SandboxSnapshotError
        for name in (
            "BUCKET_UNAVAILABLE",
            "RESTORE_FAILED",
            "CREATE_FAILED",
            "CREATE_TIMED_OUT",
            "AUTH_FAILED",
            "TRANSPORT_FAILED",
            "CANCELED",
        )
    },
}
_SIMPLE_REASONS: dict[str, type[exc.SandboxError]] = {
    "CWSANDBOX_COMMAND_TIMEOUT": exc.SandboxCommandTimeoutError,
    "CWSANDBOX_RUNNER_UNAVAILABLE": exc.SandboxUnavailableError,
    "CWSANDBOX_BACKEND_UNAVAILABLE": exc.SandboxUnavailableError,
    "CWSANDBOX_FSS_WAIT_TIMEOUT": exc.SnapshotWaitTimeoutError,
    "CWSANDBOX_FSS_BACKEND_THROTTLED": exc.SnapshotBackendThrottledError,
    "CWSANDBOX_FSS_INFLIGHT_LIMIT": exc.SnapshotBackendThrottledError,
}
_SIMPLE_CODES: dict[grpc.StatusCode, type[exc.SandboxError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: exc.SandboxRequestTimeoutError,
    grpc.StatusCode.UNAVAILABLE: exc.SandboxUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: exc.SandboxResourceExhaustedError,
}


def _by_reason(
    failure: RpcFailure,
    text: str,
    sandbox_id: str | None,
    filepath: str | None,
    snapshot_id: str | None,
) -> exc.CWSandboxError | None:
    reason = failure.trusted_reason
    if reason is None:
        return None
    kw = failure.kwargs()
    # A Start naming a profile or runner nobody has: the missing thing is the profile or
    # runner, not the sandbox (a SandboxNotFoundError here sent users looking for an id).
    if reason == _PROFILE_NOT_FOUND and "profile_name" in failure.metadata:
        runner = failure.metadata.get("runner_id")
        return exc.ProfileNotFoundError(
            text, profile_name=failure.metadata["profile_name"], runner_id=runner, **kw
        )
    if reason == _RUNNER_NOT_FOUND and "runner_id" in failure.metadata:
        return exc.RunnerNotFoundError(text, runner_id=failure.metadata["runner_id"], **kw)
    if reason in _FILE_REASONS:
        path = filepath if filepath is not None else failure.metadata.get("filepath")
        return exc.SandboxFileError(text, filepath=path, **kw)
    if reason == "CWSANDBOX_SANDBOX_NOT_FOUND":
        sid = sandbox_id if sandbox_id is not None else failure.metadata.get("sandbox_id")
        return exc.SandboxNotFoundError(text, sandbox_id=sid, **kw)
    snapshot_cls = _SNAPSHOT_REASONS.get(reason)
    if snapshot_cls is not None:
        return snapshot_cls(text, file_system_snapshot_id=snapshot_id, **kw)
    simple = _SIMPLE_REASONS.get(reason)
    return simple(text, **kw) if simple is not None else None


def sandbox_error(
    err: grpc.RpcError,
    *,
    operation: str,
    sandbox_id: str | None = None,
    filepath: str | None = None,
    file_system_snapshot_id: str | None = None,
    snapshot_call: bool = False,
) -> exc.CWSandboxError:
    """Translate an error from a sandbox, file or snapshot RPC (protocol §9.2).

    A trusted reason wins over the status code (so a file's PERMISSION_DENIED with
    ``CWSANDBOX_FILE_PERMISSION_DENIED`` is a ``SandboxFileError``, not an auth error). Then
    the code decides: NOT_FOUND → ``SandboxNotFoundError`` (``SnapshotNotFoundError`` when
    ``snapshot_call``), CANCELLED → ``SandboxNotRunningError``, DEADLINE_EXCEEDED /
    UNAVAILABLE / RESOURCE_EXHAUSTED → their retryable types, auth codes →
    ``CWSandboxAuthenticationError``, anything else → ``SandboxError``.
    """
    failure = parse_rpc_error(err)
    kw = failure.kwargs()
    text = f"{operation} failed: {failure.description}"
    by_reason = _by_reason(failure, text, sandbox_id, filepath, file_system_snapshot_id)
    if by_reason is not None:
        return by_reason
    code = failure.code
    if code is grpc.StatusCode.NOT_FOUND:
        if snapshot_call:
            return exc.SnapshotNotFoundError(
                text, file_system_snapshot_id=file_system_snapshot_id, **kw
            )
        what = f"sandbox {sandbox_id!r} not found" if sandbox_id else "sandbox not found"
        return exc.SandboxNotFoundError(
            f"{what}: {failure.description}", sandbox_id=sandbox_id, **kw
        )
    if code is grpc.StatusCode.CANCELLED:
        return exc.SandboxNotRunningError(f"{operation} was cancelled: {failure.description}", **kw)
    if code in _AUTH_CODES:
        return exc.CWSandboxAuthenticationError(text, **kw)
    factory: Callable[..., exc.SandboxError] = _SIMPLE_CODES.get(code, exc.SandboxError)
    return factory(text, **kw)
