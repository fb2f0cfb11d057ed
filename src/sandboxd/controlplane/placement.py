"""The scheduler: which runner and bound profile may host a sandbox, and why not.

Two passes, because the two outcomes have different costs to meet:

* **Placing** must be cheap on the event loop even with 10,000 runners (target: 2 ms). The
  request is resolved against each distinct bound profile once (profiles are shared by
  every runner with the same binding, and their quantities were parsed at load), then the
  registry's load index is walked from the least loaded runner — fewest sandboxes, then most
  free CPU, then id — and the first healthy, not backed off runner with a profile that fits
  wins. That is the same runner the old "check everyone, take the minimum" picked.
* **Rejecting** must tell the user, per runner × profile, which capability or resource
  failed (admin-model.md §2.7), so they can shrink the request, ask for a looser profile or
  pick another runner. Candidates are checked completely, in runner id order, and each
  failed check becomes a BadRequest field violation naming the request field at fault, until
  the list is full (see :mod:`sandboxd.controlplane.rejections`: the answer must stay
  readable by clients); the runners after that are only counted.

A runner qualifies only if its backend can run the request: it has a working backend (a
runner started with ``--backend none`` or without root has none, and says why), and that
backend supports the egress type, ingress type and GPUs asked for — not just the profile.
A runner whose starts keep failing is backed off for a while (see
:mod:`sandboxd.controlplane.start_backoff`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from sandboxd.config import ResolvedProfile
from sandboxd.config.models import EgressConfig, EgressModeSpec, EgressType
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.controlplane.rejections import Problem, Rejections
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError, invalid_argument, profile_not_found
from sandboxd.errors import runner_not_found as runner_not_found_error
from sandboxd_protocol.quantities import format_cpu, format_memory

DEFAULT_IMAGE = "python:3.11"
IPNetwork = IPv4Network | IPv6Network
_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _ProfileFit:
    """The request resolved against one profile, before looking at any runner.

    ``head`` and ``tail`` are the failed runner-independent checks, kept apart so that
    explanations list checks in their usual order (resources, GPUs, network, image).
    """

    cpu_limit: int
    cpu_request: int
    memory_limit: int
    memory_request: int
    egress_name: str
    egress: EgressModeSpec | None
    ingress_name: str
    ingress_type: str
    image: str
    lifetime: int
    head: tuple[Problem, ...]
    tail: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """No runner-independent check failed."""
        return not self.head and not self.tail


def _fit_profile(request: SandboxRequest, profile: ResolvedProfile) -> _ProfileFit:
    spec, q = profile.spec, profile.quantities
    cpu_limit = request.cpu_limit or request.cpu_request or q.cpu_limit_or_default
    memory_limit = request.memory_limit or request.memory_request or q.memory_limit_or_default
    cpu_request = request.cpu_request or (
        cpu_limit if request.cpu_limit else (q.cpu_request or cpu_limit)
    )
    memory_request = request.memory_request or (
        memory_limit if request.memory_limit else (q.memory_request or memory_limit)
    )
    cpu_request, memory_request = min(cpu_request, cpu_limit), min(memory_request, memory_limit)

    head: list[Problem] = []
    if q.max_cpu_millicores is not None and cpu_limit > q.max_cpu_millicores:
        ceiling = spec.resource_ceilings.cpu
        shown = request.written.show_cpu(cpu_limit)
        head.append(("resource_limits.cpu", f"{shown} CPU exceeds the ceiling of {ceiling}"))
    if q.max_memory_bytes is not None and memory_limit > q.max_memory_bytes:
        ceiling = spec.resource_ceilings.memory
        head.append(
            (
                "resource_limits.memory",
                f"{request.written.show_memory(memory_limit)} of memory exceeds the ceiling "
                f"of {ceiling}",
            )
        )
    if request.gpu_count and q.max_gpu_count is not None and request.gpu_count > q.max_gpu_count:
        head.append(
            (
                "resource_limits.gpu",
                f"{request.gpu_count} GPUs exceed the ceiling {q.max_gpu_count}",
            )
        )

    tail: list[Problem] = []
    if request.egress_type:
        egress_name, egress = _egress_of_type(request, spec.network.egress)
        if egress is None:
            tail.append(("spec.network.egress", _unoffered(request.egress_type, profile)))
    else:
        egress_name = request.egress_mode or spec.network.egress.default
        egress = spec.network.egress.modes.get(egress_name)
        if egress is None:
            tail.append(
                (
                    "network.egress_mode",
                    f"egress mode {egress_name!r} not offered "
                    f"(offers: {list(profile.egress_modes)})",
                )
            )
    ingress_name, ingress_type = "", ""
    if request.exposed_ports or request.ingress_mode:
        ingress = spec.network.ingress
        ingress_name = request.ingress_mode or (ingress.default if ingress else "")
        if request.ingress_type and ingress:
            ingress_name = next(
                (n for n, m in ingress.modes.items() if m.type.value == request.ingress_type), ""
            )
        mode = ingress.modes.get(ingress_name) if ingress else None
        if mode is None:
            tail.append(
                (
                    "network.ingress_mode",
                    f"ingress mode {ingress_name or '(default)'!r} not offered "
                    f"(offers: {list(profile.ingress_modes) or 'none'})",
                )
            )
        else:
            ingress_type = mode.type.value

    lifetime = request.max_lifetime_seconds or spec.max_lifetime_seconds or 0
    if spec.max_lifetime_seconds:
        lifetime = min(lifetime, spec.max_lifetime_seconds)
    return _ProfileFit(
        cpu_limit=cpu_limit,
        cpu_request=cpu_request,
        memory_limit=memory_limit,
        memory_request=memory_request,
        egress_name=egress_name,
        egress=egress,
        ingress_name=ingress_name,
        ingress_type=ingress_type,
        image=request.image or spec.container_image or DEFAULT_IMAGE,
        lifetime=lifetime,
        head=tuple(head),
        tail=tuple(tail),
    )


def _egress_of_type(
    request: SandboxRequest, egress: EgressConfig
) -> tuple[str, EgressModeSpec | None]:
    """The profile's egress mode of the requested type (default mode first), if any.

    An allowlist mode qualifies only if every requested CIDR lies inside one of its own, so
    a request can narrow a profile's allowlist but never widen it.
    """
    wanted = [ip_network(c, strict=False) for c in request.egress_cidrs]
    names = [egress.default, *(n for n in egress.modes if n != egress.default)]
    for name in names:
        mode = egress.modes[name]
        if mode.type.value != request.egress_type:
            continue
        if mode.type is EgressType.ALLOWLIST:
            allowed = [ip_network(c, strict=False) for c in mode.cidrs]
            if not all(_inside(w, allowed) for w in wanted):
                continue
        return name, mode
    return request.egress_type, None


def _inside(network: IPNetwork, allowed: list[IPNetwork]) -> bool:
    return any(
        network.version == a.version and network.subnet_of(a)  # type: ignore[arg-type]
        for a in allowed
    )


def _unoffered(egress_type: str, profile: ResolvedProfile) -> str:
    what = "an allowlist covering the requested CIDRs" if egress_type == "allowlist" else "it"
    kinds = sorted({m.type.value for m in profile.spec.network.egress.modes.values()})
    return (
        f"{egress_type} egress is not offered by profile {profile.profile_name!r} "
        f"(or not {what}; it offers: {kinds})"
    )


Choice = tuple[tuple[ResolvedProfile, _ProfileFit], ...]


class _Fits:
    """The request resolved once per distinct profile, and per distinct binding list.

    Runners with the same bindings share the very same profile tuple (the registry resolves
    each binding list once), so a placement over 10,000 runners resolves a handful.
    Entries keep their key objects alive, so an ``id`` cannot be reused meanwhile.
    """

    def __init__(self, request: SandboxRequest) -> None:
        self._request = request
        self._fits: dict[int, tuple[ResolvedProfile, _ProfileFit]] = {}
        self._choices: dict[int, tuple[tuple[ResolvedProfile, ...], Choice, Choice]] = {}

    def of(self, profile: ResolvedProfile) -> _ProfileFit:
        """The request resolved against ``profile``."""
        found = self._fits.get(id(profile))
        if found is None:
            found = (profile, _fit_profile(self._request, profile))
            self._fits[id(profile)] = found
        return found[1]

    def _choice(
        self, profiles: tuple[ResolvedProfile, ...]
    ) -> tuple[tuple[ResolvedProfile, ...], Choice, Choice]:
        found = self._choices.get(id(profiles))
        if found is None:
            names = self._request.profile_names
            if names:
                chosen = [p for p in profiles if p.profile_name in names]
            else:
                chosen = [p for p in profiles if p.is_default]
            every = tuple((p, self.of(p)) for p in chosen)
            found = (profiles, every, tuple(e for e in every if e[1].ok))
            self._choices[id(profiles)] = found
        return found

    def chosen(self, runner: RunnerState) -> Choice:
        """The bindings the request may use on a runner (named ones, else its default)."""
        return self._choice(runner.profiles)[1]

    def promising(self, runner: RunnerState) -> Choice:
        """Those of :meth:`chosen` that pass every runner-independent check."""
        return self._choice(runner.profiles)[2]

    def any_promising(self, binding_lists: Iterable[tuple[ResolvedProfile, ...]]) -> bool:
        """Whether any of these binding lists has a profile that may fit at all."""
        return any(self._choice(profiles)[2] for profiles in binding_lists)


def _check(
    request: SandboxRequest, runner: RunnerState, profile: ResolvedProfile, fit: _ProfileFit
) -> Placement | list[Problem]:
    """The placement on this runner×profile, or every check that failed there."""
    problems = list(fit.head)
    support = runner.support
    gpu_types: tuple[str, ...] = ()
    if request.gpu_count:
        gpu_types = runner.gpu_types_for(profile)
        if request.gpu_type and request.gpu_type.casefold() not in {
            t.casefold() for t in gpu_types
        }:
            problems.append(
                (
                    "resource_limits.gpu.gpu_type",
                    f"GPU type {request.gpu_type!r} not offered "
                    f"(offers: {list(gpu_types) or 'none'})",
                )
            )
        elif not gpu_types:
            problems.append(("resource_limits.gpu", "offers no GPUs"))
        elif not support.gpus:
            problems.append(
                (
                    "resource_limits.gpu",
                    f"this runner's backend ({support.backend}) cannot attach GPUs to sandboxes",
                )
            )
    problems.extend(fit.tail)
    if runner.images and fit.image not in runner.images:
        problems.append(("container_image", f"image {fit.image!r} is not available on this runner"))
    if fit.egress is not None and not support.allows_egress(fit.egress.type.value):
        problems.append(
            (
                "network.egress_mode",
                f"egress mode {fit.egress_name!r} needs {fit.egress.type.value} egress, which "
                f"this runner's backend ({support.backend}) cannot provide "
                f"(it provides: {sorted(support.egress_types or ())})",
            )
        )
    if fit.ingress_type and not support.allows_ingress(fit.ingress_type):
        problems.append(
            (
                "network.ingress_mode",
                f"ingress mode {fit.ingress_name!r} needs {fit.ingress_type} ingress, which "
                f"this runner's backend ({support.backend}) cannot provide "
                f"(it provides: {sorted(support.ingress_types or ()) or 'none'})",
            )
        )
    if not problems:  # live capacity only matters for an otherwise acceptable profile
        free_cpu, free_memory = runner.free_cpu_millicores, runner.free_memory_bytes
        shown = request.written
        if fit.cpu_request > free_cpu:
            problems.append(
                (
                    "resource_requests.cpu",
                    f"{shown.show_cpu(fit.cpu_request)} CPU requested, "
                    f"{format_cpu(max(free_cpu, 0))} free",
                )
            )
        if fit.memory_request > free_memory:
            problems.append(
                (
                    "resource_requests.memory",
                    f"{shown.show_memory(fit.memory_request)} of memory requested, "
                    f"{format_memory(max(free_memory, 0))} free",
                )
            )
        if request.gpu_count > runner.free_gpu_count:
            problems.append(
                (
                    "resource_requests.gpu",
                    f"{request.gpu_count} GPUs requested, {runner.free_gpu_count} free",
                )
            )
        room = _disk_room(runner)
        if room is not None and profile.quantities.disk_bytes > room:
            problems.append(
                (
                    "runner_ids",
                    f"its disk is full: it has room for a writable layer of at most "
                    f"{format_memory(room)}, the profile's is "
                    f"{format_memory(profile.quantities.disk_bytes)}",
                )
            )
    if problems or fit.egress is None:
        return problems
    q = profile.quantities
    return Placement(
        runner=runner,
        profile=profile,
        image=fit.image,
        cpu_limit=fit.cpu_limit,
        cpu_request=fit.cpu_request,
        memory_limit=fit.memory_limit,
        memory_request=fit.memory_request,
        gpu_count=request.gpu_count,
        gpu_type=request.gpu_type or (gpu_types[0] if request.gpu_count and gpu_types else ""),
        egress_mode=fit.egress_name,
        egress_type=fit.egress.type,
        egress_cidrs=request.egress_cidrs or fit.egress.cidrs,
        ingress_mode=fit.ingress_name,
        ingress_type=fit.ingress_type,
        disk_bytes=q.disk_bytes,
        pids_max=q.pids_max,
        max_lifetime_seconds=fit.lifetime,
    )


def _disk_room(runner: RunnerState) -> int | None:
    """The largest writable layer the runner said it can make now (None: any, or unsaid)."""
    resources = runner.resources
    return resources.disk_room_bytes if resources.HasField("disk_room_bytes") else None


def _surely_unfit(request: SandboxRequest, runner: RunnerState, fit: _ProfileFit) -> bool:
    """A cheap test that implies :func:`_check` fails (so it need not write why)."""
    if request.gpu_count and (
        request.gpu_count > runner.free_gpu_count
        or (request.gpu_type and request.gpu_type.casefold() not in runner.gpu_types_folded)
    ):
        return True
    return (
        fit.cpu_request > runner.free_cpu_millicores
        or fit.memory_request > runner.free_memory_bytes
    )


def _first_fit(request: SandboxRequest, runner: RunnerState, fits: _Fits) -> Placement | None:
    """The first of the runner's chosen profiles (binding order) that fits, if any."""
    for profile, fit in fits.promising(runner):
        if _surely_unfit(request, runner, fit):
            continue
        result = _check(request, runner, profile, fit)
        if isinstance(result, Placement):
            return result
    return None


def _least_loaded(
    registry: RunnerRegistry,
    request: SandboxRequest,
    fits: _Fits,
    avoid: frozenset[str] = frozenset(),
) -> Placement | None:
    """Walk runners from the least loaded; the first that fits is the least loaded fit."""
    for runner in registry.by_load(with_gpus=request.gpu_count > 0):
        if runner.runner_id in avoid:
            continue
        if fits.promising(runner) and registry.can_take_sandboxes(runner):
            placement = _first_fit(request, runner, fits)
            if placement is not None:
                return placement
    return None


def _best_of_named(
    registry: RunnerRegistry,
    request: SandboxRequest,
    fits: _Fits,
    avoid: frozenset[str] = frozenset(),
) -> Placement | None:
    """Among the runners the request names, the least loaded that fits."""
    found = []
    for runner_id in dict.fromkeys(request.runner_ids):
        if runner_id in avoid:
            continue
        runner = registry.get(runner_id)
        if runner is not None and registry.can_take_sandboxes(runner):
            placement = _first_fit(request, runner, fits)
            if placement is not None:
                found.append(placement)
    return min(found, key=lambda p: p.runner.load_key) if found else None


def _unusable(registry: RunnerRegistry, runner: RunnerState) -> tuple[str, str] | None:
    """Why a runner can take no sandbox at all now (description, summary), if so."""
    if not registry.is_healthy(runner) or runner.link is None:
        return "unhealthy", "unhealthy"
    if not runner.support.working:
        return runner.support.problem, "no working backend"
    if runner.cordoned:
        what = "draining" if runner.drain_deadline is not None else "cordoned"
        return f"{what} by an administrator (no new sandboxes)", what
    until = registry.backed_off_until(runner)
    if until is not None:
        starts = runner.starts
        return (
            f"backed off after {starts.failures} failed starts: {starts.last_failure}, "
            f"until {until.isoformat(timespec='seconds')}",
            "backed off",
        )
    return None


def _explain(
    registry: RunnerRegistry, request: SandboxRequest, fits: _Fits
) -> Placement | ApiError:
    """Check candidates completely, in id order, until the explanation is full."""
    names = request.profile_names
    runners: Iterator[RunnerState] = (
        iter([r for i in dict.fromkeys(request.runner_ids) if (r := registry.get(i))])
        if request.runner_ids
        else registry.iter_from()
    )
    rejections = Rejections()
    missed: list[Placement] = []
    seen = offering = 0
    for runner in runners:
        seen += 1
        chosen = fits.chosen(runner)
        if names and not chosen:
            continue  # does not offer the named profile: not a candidate at all
        offering += 1
        if rejections.full:
            # The rest are only counted: by the registry's tallies where it keeps them.
            if request.runner_ids or len(names) > 1:
                rest = sum(1 for r in runners if not names or fits.chosen(r))
            elif names:
                rest = registry.runners_offering(names[0]) - offering
            else:
                rest = len(registry) - seen
            rejections.unlisted(1 + rest)
            break
        unusable = _unusable(registry, runner)
        if unusable is not None:
            rejections.runner(runner.runner_id, "runner_ids", *unusable)
            continue
        if not chosen:
            rejections.runner(
                runner.runner_id, "profile_names", "has no profile bound", "no profile bound"
            )
            continue
        rejected: list[tuple[str, list[Problem]]] = []
        for profile, fit in chosen:
            result = _check(request, runner, profile, fit)
            if isinstance(result, Placement):
                missed.append(result)
            else:
                rejected.append((profile.profile_name, result))
        if rejected:
            rejections.profiles(runner.runner_id, rejected)
    if missed:  # the load index disagreed with the full check: trust the full check
        best = min(missed, key=lambda p: p.runner.load_key)
        _log.warning("placement index missed runner %s; placing there", best.runner.runner_id)
        return best
    return rejections.error(names_profile=request.names_profile, profile_names=names)


def _check_names_exist(registry: RunnerRegistry, request: SandboxRequest) -> None:
    for runner_id in request.runner_ids:
        if registry.get(runner_id) is None:
            raise runner_not_found_error(runner_id)
    for name in request.profile_names:
        if not registry.offers_profile(name):
            raise profile_not_found(name)
    if request.image and registry.lists_images() and not registry.lists_image(request.image):
        raise invalid_argument(
            "container_image",
            f"unknown image {request.image!r}; provide it on a runner host with "
            f"`sandboxd images build {request.image}` (python:3.11 and other Debian-based "
            f"Python images) or `sandboxd images import {request.image} PATH`",
        )


def place(registry: RunnerRegistry, request: SandboxRequest) -> Placement:
    """Pick the least-loaded usable runner×profile that fits, or explain every rejection.

    Raises :class:`ApiError`: NOT_FOUND for a runner or profile name nobody has,
    INVALID_ARGUMENT for an image no runner lists, else FAILED_PRECONDITION with reason
    ``CWSANDBOX_PROFILE_MISMATCH`` (the request named profiles) or
    ``CWSANDBOX_NO_SUITABLE_RUNNER`` and one violation per failed check (capped).
    """
    _check_names_exist(registry, request)
    fits = _Fits(request)
    if request.runner_ids:
        chosen = _best_of_named(registry, request, fits)
    elif fits.any_promising(registry.binding_lists()):
        chosen = _least_loaded(registry, request, fits)
    else:  # every bound profile refuses the request whatever the runner: only explain
        chosen = None
    if chosen is not None:
        return chosen
    outcome = _explain(registry, request, fits)
    if isinstance(outcome, Placement):
        return outcome
    raise outcome


def place_elsewhere(
    registry: RunnerRegistry, request: SandboxRequest, avoid: frozenset[str]
) -> Placement | None:
    """Where ``request`` fits on a usable runner outside ``avoid``; None if nowhere.

    For a start moved off the runners that failed it (``start_moves.py``): the request was
    placed once already, so its names exist, and nothing is explained when it fits nowhere
    (the start then fails with its runner's own reason).
    """
    fits = _Fits(request)
    if request.runner_ids:
        return _best_of_named(registry, request, fits, avoid)
    return _least_loaded(registry, request, fits, avoid)
