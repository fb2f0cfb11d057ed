"""Warm pools as the control plane sees them: what runners are asked to keep, what they have.

The control plane owns the profiles, so it tells each runner, when the runner registers
(``Registered.warm_pools``), which of its bound profiles keep a warm pool, how large, and
what a Start on that profile asking for nothing special resolves to — the same
``SandboxSpec`` a real Start would get from ``build_spec``, so the runner can compare the
two (``sandboxd.runner.warm_pool``). Runners report each pool's size and readiness in their
heartbeats; discovery shows them on the runner×profile (``ProfileSummary``, a sandboxd
extension field existing clients skip). Pool sandboxes are not sandboxes of anyone: they
have no record, no reservation and no quota use here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import cast

from sandboxd.config import ResolvedProfile
from sandboxd.controlplane.placement import Placement, _fit_profile
from sandboxd.controlplane.registry import RunnerState
from sandboxd.controlplane.sandbox_spec import build_spec
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import discovery_pb2

__all__ = ["DEFAULTS_REQUEST", "pool_message", "warm_pool_specs"]

_log = logging.getLogger(__name__)

DEFAULTS_REQUEST = SandboxRequest(
    command=(),
    image="",
    environment={},
    tags=(),
    profile_names=(),
    runner_ids=(),
    cpu_limit=None,
    cpu_request=None,
    memory_limit=None,
    memory_request=None,
    gpu_count=0,
    gpu_type="",
    egress_mode="",
    ingress_mode="",
    exposed_ports=(),
    mounted_files=(),
    max_lifetime_seconds=None,
)
"""A Start that asks for nothing: every value comes from the profile."""


def template_spec(profile: ResolvedProfile) -> runner_pb2.SandboxSpec | None:
    """What a Start on ``profile`` with nothing of its own resolves to; None if it cannot."""
    fit = _fit_profile(DEFAULTS_REQUEST, profile)
    if not fit.ok or fit.egress is None:
        return None
    q = profile.quantities
    placement = Placement(
        runner=cast(RunnerState, None),  # build_spec never looks at the runner
        profile=profile,
        image=fit.image,
        cpu_limit=fit.cpu_limit,
        cpu_request=fit.cpu_request,
        memory_limit=fit.memory_limit,
        memory_request=fit.memory_request,
        gpu_count=0,
        gpu_type="",
        egress_mode=fit.egress_name,
        egress_type=fit.egress.type,
        egress_cidrs=fit.egress.cidrs,
        ingress_mode="",
        ingress_type="",
        disk_bytes=q.disk_bytes,
        pids_max=q.pids_max,
        max_lifetime_seconds=fit.lifetime,
    )
    spec = build_spec("", DEFAULTS_REQUEST, placement)
    spec.ClearField("max_lifetime_seconds")  # applied when a sandbox is claimed
    return spec


def warm_pool_specs(profiles: Iterable[ResolvedProfile]) -> list[runner_pb2.WarmPool]:
    """The pools a runner bound to ``profiles`` should keep."""
    pools = []
    for profile in profiles:
        size = profile.spec.warm_pool.size
        if size <= 0:
            continue
        spec = template_spec(profile)
        if spec is None:
            _log.warning(
                "profile %s: its defaults do not make a valid sandbox; no warm pool",
                profile.profile_name,
            )
            continue
        pools.append(runner_pb2.WarmPool(profile_name=profile.profile_name, size=size, spec=spec))
    return pools


def pool_message(
    state: RunnerState, profile: ResolvedProfile
) -> discovery_pb2.SandboxdWarmPool | None:
    """Discovery's view of one runner×profile's pool; None when the profile keeps none."""
    size = profile.spec.warm_pool.size
    if size <= 0:
        return None
    reported = next((p for p in state.warm_pools if p.profile_name == profile.profile_name), None)
    if reported is None:
        return discovery_pb2.SandboxdWarmPool(size=size)
    return discovery_pb2.SandboxdWarmPool(
        size=size, ready=min(reported.ready, size), error=reported.error, claims=reported.claims
    )
