"""API errors of the control plane, and their one translation to gRPC status.

Why one module: DESIGN.md rule 6 — errors are part of the API. Every handler raises an
:class:`ApiError` (or a subclass helper below); :func:`abort_with` is the only place that turns
one into a ``google.rpc.Status`` with an ``ErrorInfo`` (domain ``cwsandbox.com``, a
``CWSANDBOX_*`` reason), optional ``BadRequest`` field violations and ``RetryInfo``, carried in
the ``grpc-status-details-bin`` trailer that clients parse (AIP-193).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "cwsandbox.com"
"""ErrorInfo domain that clients trust for reason-based mapping."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field in a request: ``field`` is the request path, ``description`` says why."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """An error a client should see as a gRPC status with structured details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    retry_after_seconds: float | None = None

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        """Build the ``google.rpc.Status`` carried in ``grpc-status-details-bin``."""
        details: list[any_pb2.Any] = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata)
            )
            details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(
            code=_CODE_NUMBERS[self.code], message=self.message, details=details
        )


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    code: code.value[0]
    for code in grpc.StatusCode  # StatusCode.value is (int, name)
}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND


def invalid_argument(field_path: str, problem: str) -> ApiError:
    """A malformed request: the message and the field violation both name the field."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid {field_path}: {problem}",
        reason="CWSANDBOX_INVALID_ARGUMENT",
        metadata={"field": field_path},
        violations=(FieldViolation(field_path, problem),),
    )


def runner_not_found(runner_id: str) -> ApiError:
    """No runner with this id is known to the control plane."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"runner {runner_id!r} not found",
        reason="CWSANDBOX_RUNNER_NOT_FOUND",
        metadata={"runner_id": runner_id},
    )


def profile_not_found(profile_name: str, runner_id: str = "") -> ApiError:
    """No bound profile with this name (on this runner, when one is given)."""
    where = f" on runner {runner_id!r}" if runner_id else ""
    metadata = {"profile_name": profile_name}
    if runner_id:
        metadata["runner_id"] = runner_id
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"profile {profile_name!r} not found{where}",
        reason="CWSANDBOX_PROFILE_NOT_FOUND",
        metadata=metadata,
    )


def unauthenticated(message: str) -> ApiError:
    """A missing, malformed, unknown or revoked credential (API key, join token, runner)."""
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message, reason="CWSANDBOX_AUTH_EXPIRED")


def permission_denied(message: str, reason: str, **metadata: str) -> ApiError:
    """A valid credential that may not do this (a member calling the admin API, say)."""
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message, reason=reason, metadata=metadata)


def not_found(what: str, identifier: str, reason: str = "CWSANDBOX_NOT_FOUND") -> ApiError:
    """No such object (an API key id, a join token id, a runner credential)."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{what} {identifier!r} not found",
        reason=reason,
        metadata={"id": identifier},
    )


def status_trailers(error: ApiError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata that carries the rich status of ``error``."""
    return (("grpc-status-details-bin", error.to_status().SerializeToString()),)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> NoReturn:
    """Abort the current RPC with ``error``'s code, message and AIP-193 details."""
    await context.abort(error.code, error.message, trailing_metadata=status_trailers(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
