"""Per-organization quotas, checked before any work is done.

Why here and why synchronous: a Start is checked against what the organization's live
sandboxes already take, and recorded, with no ``await`` in between (see
:meth:`sandboxd.controlplane.lifecycle.Lifecycle.start`), so two concurrent Starts cannot both
slip under the limit. A refusal is RESOURCE_EXHAUSTED with a reason that names the quota
(``CWSANDBOX_<QUOTA>_QUOTA_EXCEEDED``) and metadata saying the limit and the use; nothing of
the organization's state changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from sandboxd.config.quotas import QuotaConfig, QuotaLimits
from sandboxd.controlplane.written_quantities import WrittenQuantities
from sandboxd.errors import ApiError
from sandboxd_protocol.quantities import format_cpu, format_memory

RUNNING_SANDBOXES = "running_sandboxes"
CPU = "cpu"
MEMORY = "memory"
CONCURRENT_EXECS = "concurrent_execs"


@dataclass(frozen=True)
class OrgQuota:
    """One organization's limits, resolved (``None``: no limit)."""

    running_sandboxes: int | None = None
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    concurrent_execs: int | None = None


@dataclass(frozen=True)
class Usage:
    """What an organization's live sandboxes take."""

    running_sandboxes: int = 0
    cpu_millicores: int = 0
    memory_bytes: int = 0


def quota_exceeded(
    quota: str,
    organization: str,
    limit: int,
    used: int,
    wanted: int,
    *,
    written: WrittenQuantities | None = None,
) -> ApiError:
    """RESOURCE_EXHAUSTED naming the quota, the limit, the use and what the call needed.

    CPU and memory are shown as quantities ("1500m", "1Gi"), what the request needed in the
    units it was written in; the metadata keeps plain integers (millicores, bytes) for code.
    """
    shown = written or WrittenQuantities()
    show = {CPU: shown.show_cpu, MEMORY: shown.show_memory}.get(quota, str)
    plain = {CPU: format_cpu, MEMORY: format_memory}.get(quota, str)
    what = {CPU: " of CPU", MEMORY: " of memory"}.get(quota, "")
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"organization {organization!r} is at its {quota} quota: {plain(used)} of "
        f"{plain(limit)}{what} in use, this request needs {show(wanted)} more",
        reason=f"CWSANDBOX_{quota.upper()}_QUOTA_EXCEEDED",
        metadata={
            "quota": quota,
            "organization": organization,
            "limit": str(limit),
            "used": str(used),
            "requested": str(wanted),
        },
    )


def _merge(default: QuotaLimits, own: QuotaLimits | None) -> OrgQuota:
    def pick(name: str) -> int | None:
        value: int | None = getattr(own, name) if own is not None else None
        return value if value is not None else getattr(default, name)

    return OrgQuota(
        running_sandboxes=pick("running_sandboxes"),
        cpu_millicores=pick("cpu_millicores"),
        memory_bytes=pick("memory_bytes"),
        concurrent_execs=pick("concurrent_execs"),
    )


class Quotas:
    """The configured quotas, and the live count of open execs per organization."""

    def __init__(self, config: QuotaConfig) -> None:
        self._execs: Counter[str] = Counter()
        self.reconfigure(config)

    def reconfigure(self, config: QuotaConfig) -> None:
        """Use new limits from now on (``sandboxd config apply``); open execs stay counted.

        Sandboxes already running are not touched: a lower limit only refuses new work.
        """
        self._default = _merge(config.default, None)
        self._orgs = {org: _merge(config.default, own) for org, own in config.organizations.items()}

    def for_org(self, organization: str) -> OrgQuota:
        """The limits that apply to ``organization``."""
        return self._orgs.get(organization, self._default)

    def check_start(
        self,
        organization: str,
        usage: Usage,
        cpu_millicores: int,
        memory_bytes: int,
        written: WrittenQuantities | None = None,
    ) -> None:
        """Refuse a new sandbox that would take the organization over a quota.

        ``written`` is the request's quantities as sent, so the refusal shows them that way.
        """
        quota = self.for_org(organization)
        checks: Iterable[tuple[str, int | None, int, int]] = (
            (RUNNING_SANDBOXES, quota.running_sandboxes, usage.running_sandboxes, 1),
            (CPU, quota.cpu_millicores, usage.cpu_millicores, cpu_millicores),
            (MEMORY, quota.memory_bytes, usage.memory_bytes, memory_bytes),
        )
        for name, limit, used, wanted in checks:
            if limit is not None and used + wanted > limit:
                raise quota_exceeded(name, organization, limit, used, wanted, written=written)

    def acquire_exec(self, organization: str) -> None:
        """Take one of the organization's concurrent execs; pair with :meth:`release_exec`."""
        limit = self.for_org(organization).concurrent_execs
        used = self._execs[organization]
        if limit is not None and used + 1 > limit:
            raise quota_exceeded(CONCURRENT_EXECS, organization, limit, used, 1)
        self._execs[organization] += 1

    def release_exec(self, organization: str) -> None:
        """Give back an exec taken with :meth:`acquire_exec`."""
        self._execs[organization] -= 1
        if self._execs[organization] <= 0:
            del self._execs[organization]
