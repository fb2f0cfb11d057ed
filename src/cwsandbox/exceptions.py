"""Every error the cwsandbox client raises on purpose.

Catch a branch of the tree to handle a whole family of failures at once; catch
``CWSandboxError`` to handle anything the client raised deliberately. Lower-layer gRPC errors
are translated into this tree in exactly one place (``cwsandbox._error_mapping``), so a raw
``grpc.RpcError`` never reaches users of discovery calls.

The hierarchy::

    CWSandboxError
    ├── CWSandboxAuthenticationError       credentials missing, invalid or not allowed
    ├── DiscoveryError                     network or service failure during discovery
    │   ├── RunnerNotFoundError            .runner_id
    │   └── ProfileNotFoundError           .profile_name, .runner_id
    ├── FunctionError                      a remote function raised
    │   └── AsyncFunctionError
    └── SandboxError                       anything about one sandbox
        ├── SandboxNotFoundError           .sandbox_id
        ├── SandboxNotRunningError         stopped, stopping or cancelled
        │   └── SandboxUnavailableError    runner/backend unavailable (retried while polling)
        │       └── SnapshotBackendThrottledError
        ├── SandboxFailedError             the sandbox ended in FAILED
        ├── SandboxTerminatedError         the sandbox ended in TERMINATED
        ├── SandboxTimeoutError            a client-side wait ran out
        │   ├── SandboxRequestTimeoutError one RPC hit its deadline
        │   ├── SandboxCommandTimeoutError the server timed a command out
        │   └── SnapshotWaitTimeoutError
        ├── SandboxExecutionError          .exec_result; a command failed
        │   ├── SandboxStreamBackpressureError
        │   └── SandboxStreamTruncatedError
        ├── SandboxResourceExhaustedError  quota or capacity exhausted
        ├── SandboxFileError               .filepath
        ├── SandboxTerminalStateUnavailableError
        └── SandboxSnapshotError           .file_system_snapshot_id
            ├── SnapshotNotFoundError
            ├── SnapshotNotReadyError
            ├── SnapshotNotSupportedError
            ├── SnapshotSizeExceededError
            ├── SnapshotQuotaExceededError
            ├── SnapshotBucketMismatchError
            └── SnapshotOnStopConflictError

Every exception takes ``(message, *, reason=None, metadata=None, retry_delay=None)`` and
exposes them as ``.reason`` (the server's machine-readable ``CWSANDBOX_*`` reason, if any),
``.metadata`` (a dict, empty when the server sent none) and ``.retry_delay`` (a
``timedelta`` the server asked the client to wait before retrying, or ``None``). Subclasses
add keyword-only context such as ``runner_id``. Exceptions pickle with all their attributes,
so they survive being sent between processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

__all__ = [
    "AsyncFunctionError",
    "CWSandboxAuthenticationError",
    "CWSandboxError",
    "DiscoveryError",
    "FunctionError",
    "ProfileNotFoundError",
    "RunnerNotFoundError",
    "SandboxCommandTimeoutError",
    "SandboxError",
    "SandboxExecutionError",
    "SandboxFailedError",
    "SandboxFileError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxRequestTimeoutError",
    "SandboxResourceExhaustedError",
    "SandboxSnapshotError",
    "SandboxStreamBackpressureError",
    "SandboxStreamTruncatedError",
    "SandboxTerminalStateUnavailableError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SnapshotBackendThrottledError",
    "SnapshotBucketMismatchError",
    "SnapshotNotFoundError",
    "SnapshotNotReadyError",
    "SnapshotNotSupportedError",
    "SnapshotOnStopConflictError",
    "SnapshotQuotaExceededError",
    "SnapshotSizeExceededError",
    "SnapshotWaitTimeoutError",
]


def _rebuild(cls: type[CWSandboxError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Recreate an exception from pickled state without calling its ``__init__``."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class CWSandboxError(Exception):
    """Base of every error the client raises on purpose; catch it to handle them all."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments would break default pickling.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class CWSandboxAuthenticationError(CWSandboxError):
    """The server refused the credentials (UNAUTHENTICATED or PERMISSION_DENIED).

    Deliberately not a ``SandboxError`` or ``DiscoveryError``: fixing it means fixing
    ``CWSANDBOX_API_KEY``, not retrying the operation.
    """


# --- discovery -----------------------------------------------------------------------------


class DiscoveryError(CWSandboxError):
    """A discovery call failed: unreachable server, timeout, or a service-side error."""


class RunnerNotFoundError(DiscoveryError):
    """No runner has the requested id; ``.runner_id`` says which one was asked for."""

    def __init__(
        self,
        message: str,
        *,
        runner_id: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.runner_id = runner_id


class ProfileNotFoundError(DiscoveryError):
    """No profile matches ``.profile_name`` (on ``.runner_id`` when the lookup was scoped)."""

    def __init__(
        self,
        message: str,
        *,
        profile_name: str,
        runner_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.profile_name = profile_name
        self.runner_id = runner_id


# --- remote functions ----------------------------------------------------------------------


class FunctionError(CWSandboxError):
    """A remote function raised, or its result could not be brought back.

    When the function itself raised, ``exception_type`` and ``exception_message`` name the
    remote exception and ``remote_traceback`` holds its traceback as text (the message
    includes it too); they are ``None`` when the failure happened around the function.
    """

    def __init__(
        self,
        message: str,
        *,
        exception_type: str | None = None,
        exception_message: str | None = None,
        remote_traceback: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.remote_traceback = remote_traceback


class AsyncFunctionError(FunctionError):
    """A remote function was used in a way only an async function allows (or vice versa)."""


# --- sandboxes -----------------------------------------------------------------------------


class SandboxError(CWSandboxError):
    """Base of everything that goes wrong with one sandbox."""


class SandboxNotFoundError(SandboxError):
    """The server does not know the sandbox (never existed, or deleted)."""

    def __init__(
        self,
        message: str,
        *,
        sandbox_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.sandbox_id = sandbox_id


class SandboxNotRunningError(SandboxError):
    """The operation needs a running sandbox, and this one is stopped, stopping or cancelled."""


class SandboxUnavailableError(SandboxNotRunningError):
    """The runner or backend holding the sandbox is unreachable for now; worth retrying."""


class SandboxFailedError(SandboxError):
    """The sandbox ended in FAILED (it could not start, or died fatally).

    ``status_reason`` is the server's explanation (also in the message), e.g. "image not
    found" or "lost: its processes died with their host"; ``None`` when it gave none.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox_id: str | None = None,
        status_reason: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.sandbox_id = sandbox_id
        self.status_reason = status_reason


class SandboxTerminatedError(SandboxError):
    """The sandbox ended in TERMINATED, i.e. it was stopped from outside."""


class SandboxTimeoutError(SandboxError):
    """A client-side wait ran out before the sandbox reached the wanted state."""


class SandboxRequestTimeoutError(SandboxTimeoutError):
    """One RPC hit its deadline (DEADLINE_EXCEEDED); worth retrying while polling."""


class SandboxCommandTimeoutError(SandboxTimeoutError):
    """The server stopped a command because it exceeded its time limit; not retried."""


class SandboxExecutionError(SandboxError):
    """A command in the sandbox failed; ``.exec_result`` holds its result when there is one."""

    def __init__(
        self,
        message: str,
        *,
        exec_result: object | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.exec_result = exec_result
        self.exception_type = exception_type
        self.exception_message = exception_message


class _StreamError(SandboxExecutionError):
    """Shared constructor for in-band stream errors, which carry the server's stream code."""

    def __init__(
        self,
        message: str,
        *,
        stream_code: str | None = None,
        exec_result: object | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(
            message,
            exec_result=exec_result,
            exception_type=exception_type,
            exception_message=exception_message,
            reason=reason if reason is not None else stream_code,
            metadata=metadata,
            retry_delay=retry_delay,
        )
        self.stream_code = stream_code


class SandboxStreamBackpressureError(_StreamError):
    """The server ended an output stream because the client could not keep up."""


class SandboxStreamTruncatedError(_StreamError):
    """The server dropped output and says so, rather than truncating silently."""


class SandboxResourceExhaustedError(SandboxError):
    """A quota or capacity limit was hit (RESOURCE_EXHAUSTED); worth retrying later."""


class SandboxFileError(SandboxError):
    """Reading or writing a file in the sandbox failed; ``.filepath`` names the file."""

    def __init__(
        self,
        message: str,
        *,
        filepath: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.filepath = filepath


class SandboxTerminalStateUnavailableError(SandboxError):
    """After a successful stop the server no longer reports the sandbox's final status."""


# --- file-system snapshots -----------------------------------------------------------------


class SandboxSnapshotError(SandboxError):
    """A file-system snapshot operation failed; ``.file_system_snapshot_id`` names it."""

    def __init__(
        self,
        message: str,
        *,
        file_system_snapshot_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_delay=retry_delay)
        self.file_system_snapshot_id = file_system_snapshot_id


class SnapshotNotFoundError(SandboxSnapshotError):
    """The snapshot does not exist."""


class SnapshotNotReadyError(SandboxSnapshotError):
    """The snapshot exists but is not READY yet, so it cannot be restored."""


class SnapshotNotSupportedError(SandboxSnapshotError):
    """The runner or profile does not support file-system snapshots."""


class SnapshotSizeExceededError(SandboxSnapshotError):
    """The snapshot would exceed the allowed size."""


class SnapshotQuotaExceededError(SandboxSnapshotError):
    """The snapshot quota is used up."""


class SnapshotBucketMismatchError(SandboxSnapshotError):
    """The snapshot lives in a different bucket than the one now configured."""


class SnapshotOnStopConflictError(SandboxSnapshotError):
    """``stop(snapshot_on_stop=True)`` cannot be honoured for this sandbox."""


class SnapshotWaitTimeoutError(SandboxTimeoutError):
    """Waiting for a snapshot to become ready ran out of time."""


class SnapshotBackendThrottledError(SandboxUnavailableError):
    """The snapshot backend is throttling requests; retry after ``.retry_delay``."""
