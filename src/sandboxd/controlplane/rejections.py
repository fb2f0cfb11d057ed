"""The explained rejection of a Start that no runner can host (admin-model.md §2.7).

Why a cap: the explanation travels in the ``grpc-status-details-bin`` trailer, and gRPC
clients refuse trailers over 16 KiB outright (and, above 8 KiB, at random). One violation
per runner×profile used to make a rejection on 10,000 runners 1.6 MB — which no client could
even read — and just 60 runners were enough to lose it. The first runners' rejections are
listed in full (runner id order, so they are stable between calls); the runners after them
are only counted, in the message and in ErrorInfo metadata ``runners_not_listed``, so the
rest need not even be checked — a rejection on 10,000 runners costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sandboxd.errors import ApiError, FieldViolation

MAX_LISTED_VIOLATIONS = 100
# Text of the listed violations and their ErrorInfo summaries; with the encoding's overhead
# the whole trailer stays under gRPC's 8 KiB soft limit on metadata.
MAX_LISTED_BYTES = 3000

Problem = tuple[str, str]
"""A failed check: the request field at fault and what failed."""


class Rejections:
    """Collects why each considered runner (and runner×profile) cannot host a request.

    A runner's rejections are listed all together or not at all; once one runner does not
    fit in the budget the list is :attr:`full`, and later runners are only counted
    (:meth:`unlisted`) — the caller need not even check them.
    """

    def __init__(self) -> None:
        self.listed: list[FieldViolation] = []
        self.summary: dict[str, str] = {}
        self.runners = 0
        self.not_listed = 0
        self.full = False
        self._bytes = 0

    def _take(self, size: int) -> bool:
        fits = len(self.listed) < MAX_LISTED_VIOLATIONS and self._bytes + size <= MAX_LISTED_BYTES
        if fits and not self.full:
            self._bytes += size
            return True
        self.full = True
        self.not_listed += 1
        return False

    def runner(self, runner_id: str, field: str, text: str, summary: str) -> None:
        """A runner that can take no sandbox at all (unhealthy, no backend, backed off)."""
        self.runners += 1
        description = f"runner {runner_id}: {text}"
        if self._take(len(field) + len(description) + len(runner_id) + len(summary)):
            self.listed.append(FieldViolation(field, description))
            self.summary[runner_id] = summary

    def profiles(self, runner_id: str, rejected: Sequence[tuple[str, Sequence[Problem]]]) -> None:
        """Each considered profile of one runner with its failed checks."""
        self.runners += 1
        entries = []
        size = 0
        for profile_name, problems in rejected:
            key = f"{runner_id}/{profile_name}"
            fields = "; ".join(sorted({field for field, _ in problems}))
            where = f"runner {runner_id}, profile {profile_name}"
            texts = [FieldViolation(field, f"{where}: {text}") for field, text in problems]
            size += len(key) + len(fields) + sum(len(v.field) + len(v.description) for v in texts)
            entries.append((key, fields, texts))
        if self._take(size):
            for key, fields, texts in entries:
                self.listed.extend(texts)
                self.summary[key] = fields

    def unlisted(self, count: int) -> None:
        """Candidate runners left unchecked because the list is already full."""
        self.runners += count
        self.not_listed += count

    def error(self, *, names_profile: bool, profile_names: Sequence[str]) -> ApiError:
        """The FAILED_PRECONDITION a client gets (PROFILE_MISMATCH when it named profiles)."""
        listed = list(self.listed)
        if not self.runners:
            listed.append(FieldViolation("runner_ids", "no runner is registered"))
        reason = "CWSANDBOX_PROFILE_MISMATCH" if names_profile else "CWSANDBOX_NO_SUITABLE_RUNNER"
        what = (
            f"profile(s) {', '.join(profile_names)}"
            if names_profile
            else "any runner's default profile"
        )
        first = listed[0].description if listed else "no runner is registered"
        more = f"and {len(listed) - 1} more" if len(listed) > 1 else ""
        if self.not_listed:
            runners = "runner" if self.not_listed == 1 else "runners"
            more += ("; " if more else "") + f"{self.not_listed} more {runners} not listed"
        metadata = {**self.summary, "runners_considered": str(self.runners)}
        if self.not_listed:
            metadata["runners_not_listed"] = str(self.not_listed)
        return ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"no healthy runner can host this sandbox on {what}: {first}"
            + (f" ({more})" if more else ""),
            reason=reason,
            metadata=metadata,
            violations=tuple(listed),
        )
