"""The runner's one translation from its own and the backends' errors to ``Failure`` messages.

Why one place: the control plane turns a ``Failure`` straight into the client's gRPC error
(``google.rpc.Code`` number, ``CWSANDBOX_*`` reason, ``ErrorInfo`` metadata), so the reasons
and metadata keys here *are* the public error contract (v1beta2.md §6 and §9). Keeping the
mapping in one module means a backend error can never leak to a client under a second,
slightly different spelling.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from sandboxd.backends.errors import (
    BackendError,
    BackendUnavailable,
    FileIsDirectory,
    FileNotFound,
    FileOperationError,
    FilePermissionDenied,
    FileTooLarge,
    ImageUnavailable,
    InvalidSpec,
    ParentNotFound,
    PauseUnsupported,
    RunnerExhausted,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SandboxStartError,
    VolumeNotFound,
)
from sandboxd.runner.exec_relay import CALL_ERRORS, OperateCall, end_call, refuse_exec
from sandboxd.runner.log_relay import refuse_logs
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = [
    "CommandFailed",
    "backend_unavailable",
    "failure",
    "from_backend_error",
    "invalid_argument",
    "refuse_command",
    "refuse_operation",
    "sandbox_not_found",
    "sandbox_not_running",
]

_log = logging.getLogger(__name__)
_MAX_MESSAGE_CHARS = 2000


def _code(status: grpc.StatusCode) -> int:
    value: int = status.value[0]
    return value


RUNNER_CAPACITY_EXHAUSTED = "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"
"""The reason of a start this runner had no room for (the control plane backs it off)."""


def failure(
    status: grpc.StatusCode, reason: str, message: str, **metadata: object
) -> runner_pb2.Failure:
    """A ``Failure`` with string metadata (``ErrorInfo.metadata`` is a string map)."""
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
    return runner_pb2.Failure(
        code=_code(status),
        reason=reason,
        message=message,
        metadata={key: str(value) for key, value in metadata.items()},
    )


class CommandFailed(Exception):
    """Raised inside a command handler to answer the command with ``failure``."""

    def __init__(self, failure: runner_pb2.Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def invalid_argument(field: str, message: str) -> CommandFailed:
    """Bad input, naming the field (rule 6 of DESIGN.md)."""
    return CommandFailed(
        failure(
            grpc.StatusCode.INVALID_ARGUMENT,
            "CWSANDBOX_INVALID_ARGUMENT",
            f"{field}: {message}",
            field=field,
        )
    )


def sandbox_not_found(sandbox_id: str) -> CommandFailed:
    """The runner does not have the sandbox (any more)."""
    return CommandFailed(
        failure(
            grpc.StatusCode.NOT_FOUND,
            "CWSANDBOX_SANDBOX_NOT_FOUND",
            f"sandbox {sandbox_id!r} is not on this runner",
            sandbox_id=sandbox_id,
        )
    )


def sandbox_not_running(sandbox_id: str) -> CommandFailed:
    """The sandbox exists but its main process has ended (or it is being stopped)."""
    return CommandFailed(
        failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CWSANDBOX_SANDBOX_NOT_RUNNING",
            f"sandbox {sandbox_id!r} is not running",
            sandbox_id=sandbox_id,
        )
    )


SANDBOX_PAUSED = "CWSANDBOX_SANDBOX_PAUSED"
"""The reason of every refusal because a sandbox is paused (exec, files, logs)."""


def sandbox_paused(sandbox_id: str) -> CommandFailed:
    """The sandbox is paused: nothing runs in it, and asking would wait for the resume."""
    return CommandFailed(
        failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            SANDBOX_PAUSED,
            f"sandbox {sandbox_id!r} is paused: resume it first",
            sandbox_id=sandbox_id,
        )
    )


def backend_unavailable(message: str) -> runner_pb2.Failure:
    """No usable backend on this runner (retryable for clients: they may be placed elsewhere)."""
    return failure(grpc.StatusCode.UNAVAILABLE, "CWSANDBOX_BACKEND_UNAVAILABLE", message)


_FILE_REASONS: tuple[tuple[type[FileOperationError], str], ...] = (
    (FileNotFound, "CWSANDBOX_FILE_NOT_FOUND"),
    (ParentNotFound, "CWSANDBOX_FILE_NOT_FOUND"),
    (FileIsDirectory, "CWSANDBOX_FILE_IS_DIRECTORY"),
    (FilePermissionDenied, "CWSANDBOX_FILE_PERMISSION_DENIED"),
)


def _file_failure(exc: FileOperationError, path: str) -> runner_pb2.Failure:
    # FAILED_PRECONDITION, never NOT_FOUND: a bare NOT_FOUND reads as "sandbox gone" to clients.
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, FileTooLarge):
        return failure(
            precondition,
            "CWSANDBOX_FILE_TOO_LARGE",
            f"file {path!r} is {exc.size} bytes, more than the {exc.max_size} bytes allowed",
            filepath=path,
            size_bytes=exc.size,
            max_size_bytes=exc.max_size,
        )
    for cls, reason in _FILE_REASONS:
        if isinstance(exc, cls):
            return failure(precondition, reason, str(exc), filepath=path)
    return failure(precondition, "CWSANDBOX_FILE_IO_FAILED", str(exc), filepath=path)


def from_backend_error(
    exc: BackendError, sandbox_id: str, *, path: str | None = None
) -> runner_pb2.Failure:
    """The public ``Failure`` for a backend error raised while serving ``sandbox_id``."""
    if isinstance(exc, FileOperationError):
        return _file_failure(exc, path if path is not None else exc.path)
    if isinstance(exc, SandboxNotFound):
        return sandbox_not_found(sandbox_id).failure
    if isinstance(exc, SandboxPaused):
        return sandbox_paused(sandbox_id).failure
    if isinstance(exc, SandboxNotRunning):
        return sandbox_not_running(sandbox_id).failure
    if isinstance(exc, PauseUnsupported):
        return failure(grpc.StatusCode.FAILED_PRECONDITION, "", str(exc), sandbox_id=sandbox_id)
    if isinstance(exc, InvalidSpec):
        return invalid_argument(exc.field, str(exc).removeprefix(f"{exc.field}: ")).failure
    if isinstance(exc, ImageUnavailable):
        return failure(grpc.StatusCode.FAILED_PRECONDITION, "", str(exc), image=exc.image)
    if isinstance(exc, BackendUnavailable):
        return backend_unavailable(str(exc))
    if isinstance(exc, SandboxExists):
        return failure(grpc.StatusCode.ALREADY_EXISTS, "", str(exc), sandbox_id=sandbox_id)
    if isinstance(exc, VolumeNotFound):
        return failure(
            grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_VOLUME_BACKEND_NOT_FOUND", str(exc)
        )
    if isinstance(exc, RunnerExhausted):  # the runner's fault: placement backs it off
        return failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            RUNNER_CAPACITY_EXHAUSTED,
            f"this runner has no room for the sandbox: {exc}",
            sandbox_id=sandbox_id,
            resource=exc.resource,
        )
    if isinstance(exc, SandboxStartError):
        return failure(grpc.StatusCode.FAILED_PRECONDITION, "", str(exc), sandbox_id=sandbox_id)
    return failure(grpc.StatusCode.INTERNAL, "", str(exc) or type(exc).__name__)


async def refuse_command(
    command: runner_pb2.Command,
    reply: Callable[[runner_pb2.RunnerMessage], Awaitable[None]],
    why: str,
) -> None:
    """Answer a command that this runner cannot run at all (no backend) with BACKEND_UNAVAILABLE."""
    try:
        result = runner_pb2.CommandResult(
            request_id=command.request_id, failure=backend_unavailable(why)
        )
        await reply(runner_pb2.RunnerMessage(result=result))
    except Exception as exc:  # the connection is gone; the control plane fails the call
        _log.info("could not refuse command %s: %s", command.request_id, exc)


async def refuse_operation(first: runner_pb2.OperationDown, call: OperateCall, why: str) -> None:
    """Answer an operation this runner cannot run at all (no backend), in-band, at once."""
    kind = first.WhichOneof("frame")
    if kind == "exec":
        await refuse_exec(call, "BACKEND_UNAVAILABLE", why)
    elif kind == "logs":
        await refuse_logs(call, "BACKEND_UNAVAILABLE", why)
    else:
        done = runner_pb2.FileDone(failure=backend_unavailable(why))
        try:
            await call.write(runner_pb2.OperationUp(done=done))
        except CALL_ERRORS as exc:
            _log.info("could not refuse a file operation: %s", exc)
        await end_call(call)
