"""The scheduler: which runner and bound profile may host a sandbox, and why not.

Why every candidate is checked completely instead of stopping at the first failure: a
rejection must tell the user, per runner, which capability or resource failed (admin-model.md
§2.7), so they can shrink the request, ask for a looser profile or pick another runner. Each
failed check becomes a BadRequest field violation naming the request field at fault.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from cwsandbox._quantity import cpu_millicores, memory_bytes
from sandboxd.config import ResolvedProfile
from sandboxd.config.models import EgressType, ProfileSpec
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError, FieldViolation, invalid_argument, profile_not_found
from sandboxd.errors import runner_not_found as runner_not_found_error

DEFAULT_IMAGE = "python:3.11"
DEFAULT_CPU_MILLICORES = 1000
DEFAULT_MEMORY_BYTES = 1024**3
DEFAULT_DISK_BYTES = 10 * 1024**3
DEFAULT_PIDS = 4096


@dataclass(frozen=True)
class Placement:
    """A runner and bound profile that can host the request, with everything resolved."""

    runner: RunnerState
    profile: ResolvedProfile
    image: str
    cpu_limit: int
    cpu_request: int
    memory_limit: int
    memory_request: int
    gpu_count: int
    gpu_type: str
    egress_mode: str
    egress_type: EgressType
    egress_cidrs: tuple[str, ...]
    ingress_mode: str
    ingress_type: str
    disk_bytes: int
    pids_max: int
    max_lifetime_seconds: int


def _limit_or(value: str | None, parse: object, fallback: int | None) -> int | None:
    return parse(value) if value else fallback  # type: ignore[operator]


def _resolve(
    request: SandboxRequest, runner: RunnerState, profile: ResolvedProfile
) -> tuple[Placement | None, list[FieldViolation]]:
    spec: ProfileSpec = profile.spec
    where = f"runner {runner.runner_id}, profile {profile.profile_name}"
    problems: list[FieldViolation] = []

    def fail(field: str, text: str) -> None:
        problems.append(FieldViolation(field, f"{where}: {text}"))

    defaults, ceilings = spec.resource_defaults, spec.resource_ceilings
    cpu_default = _limit_or(defaults.cpu_limit, cpu_millicores, None) or _limit_or(
        defaults.cpu_request, cpu_millicores, DEFAULT_CPU_MILLICORES
    )
    mem_default = _limit_or(defaults.memory_limit, memory_bytes, None) or _limit_or(
        defaults.memory_request, memory_bytes, DEFAULT_MEMORY_BYTES
    )
    cpu_limit = request.cpu_limit or request.cpu_request or cpu_default or DEFAULT_CPU_MILLICORES
    memory_limit = (
        request.memory_limit or request.memory_request or mem_default or DEFAULT_MEMORY_BYTES
    )
    cpu_request = request.cpu_request or (
        cpu_limit
        if request.cpu_limit
        else _limit_or(defaults.cpu_request, cpu_millicores, cpu_limit) or cpu_limit
    )
    memory_request = request.memory_request or (
        memory_limit
        if request.memory_limit
        else _limit_or(defaults.memory_request, memory_bytes, memory_limit) or memory_limit
    )
    cpu_request, memory_request = min(cpu_request, cpu_limit), min(memory_request, memory_limit)

    if ceilings.cpu and cpu_limit > cpu_millicores(ceilings.cpu):
        fail("resource_limits.cpu", f"{cpu_limit}m CPU exceeds the ceiling of {ceilings.cpu}")
    if ceilings.memory and memory_limit > memory_bytes(ceilings.memory):
        fail(
            "resource_limits.memory",
            f"{memory_limit} bytes of memory exceed the ceiling of {ceilings.memory}",
        )
    gpu_types = runner.gpu_types_for(profile)
    if request.gpu_count:
        if ceilings.gpu is not None and request.gpu_count > ceilings.gpu:
            fail(
                "resource_limits.gpu", f"{request.gpu_count} GPUs exceed the ceiling {ceilings.gpu}"
            )
        if request.gpu_type and request.gpu_type.casefold() not in {
            t.casefold() for t in gpu_types
        }:
            fail(
                "resource_limits.gpu.gpu_type",
                f"GPU type {request.gpu_type!r} not offered (offers: {list(gpu_types) or 'none'})",
            )
        elif not gpu_types:
            fail("resource_limits.gpu", "offers no GPUs")

    egress_name = request.egress_mode or spec.network.egress.default
    egress = spec.network.egress.modes.get(egress_name)
    if egress is None:
        fail(
            "network.egress_mode",
            f"egress mode {egress_name!r} not offered (offers: {list(profile.egress_modes)})",
        )
    ingress_name, ingress_type = "", ""
    if request.exposed_ports or request.ingress_mode:
        ingress = spec.network.ingress
        ingress_name = request.ingress_mode or (ingress.default if ingress else "")
        mode = ingress.modes.get(ingress_name) if ingress else None
        if mode is None:
            fail(
                "network.ingress_mode",
                f"ingress mode {ingress_name or '(default)'!r} not offered "
                f"(offers: {list(profile.ingress_modes) or 'none'})",
            )
        else:
            ingress_type = mode.type.value

    image = request.image or spec.container_image or DEFAULT_IMAGE
    if runner.capabilities.images and image not in runner.capabilities.images:
        fail("container_image", f"image {image!r} is not available on this runner")

    if not problems:  # live capacity only matters for an otherwise acceptable profile
        free = runner.available
        if cpu_request > free.available_cpu_millicores:
            fail(
                "resource_requests.cpu",
                f"{cpu_request}m CPU requested, {free.available_cpu_millicores}m free",
            )
        if memory_request > free.available_memory_bytes:
            fail(
                "resource_requests.memory",
                f"{memory_request} bytes requested, {free.available_memory_bytes} free",
            )
        if request.gpu_count > free.available_gpu_count:
            fail(
                "resource_requests.gpu",
                f"{request.gpu_count} GPUs requested, {free.available_gpu_count} free",
            )
    if problems or egress is None:
        return None, problems

    lifetime = request.max_lifetime_seconds or spec.max_lifetime_seconds or 0
    if spec.max_lifetime_seconds:
        lifetime = min(lifetime, spec.max_lifetime_seconds)
    placement = Placement(
        runner=runner,
        profile=profile,
        image=image,
        cpu_limit=cpu_limit,
        cpu_request=cpu_request,
        memory_limit=memory_limit,
        memory_request=memory_request,
        gpu_count=request.gpu_count,
        gpu_type=request.gpu_type or (gpu_types[0] if request.gpu_count and gpu_types else ""),
        egress_mode=egress_name,
        egress_type=egress.type,
        egress_cidrs=egress.cidrs,
        ingress_mode=ingress_name,
        ingress_type=ingress_type,
        disk_bytes=memory_bytes(ceilings.disk) if ceilings.disk else DEFAULT_DISK_BYTES,
        pids_max=ceilings.pids or DEFAULT_PIDS,
        max_lifetime_seconds=lifetime,
    )
    return placement, []


def _candidates(
    registry: RunnerRegistry, request: SandboxRequest
) -> Iterable[tuple[RunnerState, list[ResolvedProfile]]]:
    runners = (
        [registry.get(r) for r in request.runner_ids]
        if request.runner_ids
        else registry.iter_from()
    )
    for runner in runners:
        if runner is None:
            continue
        if request.profile_names:
            chosen = [p for p in runner.profiles if p.profile_name in request.profile_names]
        else:
            chosen = [p for p in runner.profiles if p.is_default]
        yield runner, chosen


def _check_names_exist(registry: RunnerRegistry, request: SandboxRequest) -> None:
    for runner_id in request.runner_ids:
        if registry.get(runner_id) is None:
            raise runner_not_found_error(runner_id)
    if request.profile_names:
        known = {p.profile_name for r in registry.iter_from() for p in r.profiles}
        for name in request.profile_names:
            if name not in known:
                raise profile_not_found(name)
    if request.image:
        images = {i for r in registry.iter_from() for i in r.capabilities.images}
        if images and request.image not in images:
            raise invalid_argument(
                "container_image",
                f"unknown image {request.image!r}; provide it on a runner host with "
                f"`sandboxd images build {request.image}` (python:3.11 and other Debian-based "
                f"Python images) or `sandboxd images import {request.image} PATH`",
            )


def place(registry: RunnerRegistry, request: SandboxRequest) -> Placement:
    """Pick the least-loaded healthy runner×profile that fits, or explain every rejection."""
    _check_names_exist(registry, request)
    fits: list[Placement] = []
    problems: list[FieldViolation] = []
    summary: dict[str, str] = {}
    for runner, profiles in _candidates(registry, request):
        if request.profile_names and not profiles:
            continue  # does not offer the named profile: not a candidate at all
        if not registry.is_healthy(runner) or runner.link is None:
            problems.append(FieldViolation("runner_ids", f"runner {runner.runner_id}: unhealthy"))
            summary[runner.runner_id] = "unhealthy"
            continue
        if not profiles:
            problems.append(
                FieldViolation("profile_names", f"runner {runner.runner_id}: has no profile bound")
            )
            summary[runner.runner_id] = "no profile bound"
            continue
        for profile in profiles:
            placement, failed = _resolve(request, runner, profile)
            if placement is not None:
                fits.append(placement)
            problems.extend(failed)
            if failed:
                summary[f"{runner.runner_id}/{profile.profile_name}"] = "; ".join(
                    sorted({v.field for v in failed})
                )
    if fits:
        return min(
            fits,
            key=lambda p: (
                len(p.runner.reservations),
                -p.runner.available.available_cpu_millicores,
                p.runner.runner_id,
            ),
        )
    reason = (
        "CWSANDBOX_PROFILE_MISMATCH" if request.names_profile else "CWSANDBOX_NO_SUITABLE_RUNNER"
    )
    what = (
        f"profile(s) {', '.join(request.profile_names)}"
        if request.names_profile
        else "any runner's default profile"
    )
    if not summary:
        problems.append(FieldViolation("runner_ids", "no runner is registered"))
    first = problems[0].description if problems else "no runner is registered"
    return_error = ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"no healthy runner can host this sandbox on {what}: {first}"
        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
        reason=reason,
        metadata={"runners_considered": str(len({k.split("/")[0] for k in summary})), **summary},
        violations=tuple(problems),
    )
    raise return_error
