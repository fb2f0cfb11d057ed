"""``coreweave.sandbox.v1beta2.DiscoveryService``: runners and profiles with live capacity.

Filters are applied here, server side, exactly as the official client expects (v1beta2.md §3):
runners by group, profile, GPU type, architecture, shared and health; profiles by GPU type,
architecture and runner. There is one ProfileSummary per runner×binding, and its ``runner_id``
equals the runner's, so client-side mode filters can join the two lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.config import ResolvedProfile
from sandboxd.controlplane.pagination import (
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
    take_page,
)
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.controlplane.warm_pools import pool_message
from sandboxd.errors import ApiError, abort_with, invalid_argument, profile_not_found
from sandboxd.errors import runner_not_found as runner_not_found_error
from sandboxd_protocol.v1beta2 import discovery_pb2, discovery_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[object, object]
_SEPARATOR = "\x00"  # sorts before every printable character in ids and names


def _same(wanted: str, offered: Iterable[str]) -> bool:
    wanted = wanted.casefold()
    return any(item.casefold() == wanted for item in offered)


def _view(requested: int, default: int) -> int:
    if requested == discovery_pb2.RUNNER_VIEW_UNSPECIFIED:
        return default
    if requested not in (discovery_pb2.RUNNER_VIEW_BASIC, discovery_pb2.RUNNER_VIEW_FULL):
        raise invalid_argument("view", f"unknown RunnerView value {requested}")
    return requested


def runner_matches(
    registry: RunnerRegistry,
    state: RunnerState,
    *,
    runner_group_id: str,
    gpu_type: str,
    architecture: str,
    healthy_only: bool,
) -> bool:
    """The runner filters both protocols share (an empty filter matches every runner)."""
    caps = state.capabilities
    return (
        (not runner_group_id or state.runner_group_id == runner_group_id)
        and (not gpu_type or _same(gpu_type, caps.gpu_types))
        and (not architecture or _same(architecture, caps.architectures))
        and not (healthy_only and not registry.is_healthy(state))
    )


class DiscoveryService(discovery_pb2_grpc.DiscoveryServiceServicer):
    """Answers discovery queries from the live :class:`RunnerRegistry`."""

    def __init__(self, registry: RunnerRegistry) -> None:
        self._registry = registry

    # -- conversion ---------------------------------------------------------------------

    def runner_message(self, state: RunnerState, view: int) -> discovery_pb2.AvailableRunner:
        """The wire form of a runner; FULL view always carries ``resources``."""
        caps = state.capabilities
        connected_at = timestamp_pb2.Timestamp()
        connected_at.FromDatetime(state.connected_at)
        message = discovery_pb2.AvailableRunner(
            runner_id=state.runner_id,
            runner_group_id=state.runner_group_id,
            tags=state.tags,
            healthy=self._registry.is_healthy(state),
            profile_names=state.profile_names,
            connected_at=connected_at,
            is_shared=state.shared,
            capabilities=discovery_pb2.RunnerCapabilitySummary(
                # Shared runners do not disclose capacity (admin-model.md §1).
                max_cpu_millicores=0 if state.shared else caps.cpu_millicores,
                max_memory_bytes=0 if state.shared else caps.memory_bytes,
                max_gpu_count=0 if state.shared else caps.gpu_count,
                supported_gpu_types=caps.gpu_types,
                supported_architectures=caps.architectures,
                supports_privileged=caps.supports_privileged,
                available_storage_classes=caps.storage_classes,
            ),
        )
        if state.cordoned:  # an administrator's cordon or drain (runner_lifecycle.py)
            message.cordoned = True
            if state.drain_deadline is not None:
                message.draining = True
                message.drain_deadline.FromDatetime(state.drain_deadline)
        until = self._registry.backed_off_until(state)  # its starts keep failing
        if until is not None:
            message.backed_off_until.FromDatetime(until)
        if view == discovery_pb2.RUNNER_VIEW_FULL:
            live = state.available
            message.resources.CopyFrom(
                discovery_pb2.RunnerResourceSummary()
                if state.shared
                else discovery_pb2.RunnerResourceSummary(
                    available_cpu_millicores=live.available_cpu_millicores,
                    available_memory_bytes=live.available_memory_bytes,
                    available_gpu_count=live.available_gpu_count,
                    running_sandboxes=live.running_sandboxes,
                    allocatable_cpu_millicores=caps.cpu_millicores,
                    allocatable_memory_bytes=caps.memory_bytes,
                    requested_cpu_millicores=state.reserved_cpu_millicores,
                    requested_memory_bytes=state.reserved_memory_bytes,
                    requested_gpu_count=state.reserved_gpu_count,
                    cpu_overcommit_ratio=state.overcommit.cpu,
                    memory_overcommit_ratio=state.overcommit.memory,
                )
            )
        return message

    @staticmethod
    def profile_message(
        state: RunnerState, profile: ResolvedProfile
    ) -> discovery_pb2.ProfileSummary:
        """The wire form of one runner×binding (with its warm pool, a sandboxd extension)."""
        message = discovery_pb2.ProfileSummary(
            profile_name=profile.profile_name,
            runner_id=state.runner_id,
            supported_gpu_types=state.gpu_types_for(profile),
            supported_architectures=state.architectures_for(profile),
            service_exposure_modes=[
                discovery_pb2.ServiceExposureMode(name=n) for n in profile.ingress_modes
            ],
            egress_modes=[discovery_pb2.EgressMode(name=n) for n in profile.egress_modes],
        )
        pool = pool_message(state, profile)
        if pool is not None:
            message.sandboxd_warm_pool.CopyFrom(pool)
        return message

    # -- runners ------------------------------------------------------------------------

    def list_runners(
        self, request: discovery_pb2.ListAvailableRunnersRequest
    ) -> discovery_pb2.ListAvailableRunnersResponse:
        """ListAvailableRunners without the gRPC plumbing (raises :class:`ApiError`)."""
        size = page_size_of(request.page_size)
        view = _view(request.view, discovery_pb2.RUNNER_VIEW_BASIC)
        filters = (
            request.runner_group_id,
            request.profile_name,
            request.gpu_type.casefold(),
            request.architecture.casefold(),
            request.exclude_shared,
            request.healthy_only,
        )
        after = decode_token(request.page_token, filter_fingerprint(filters))

        def keep(state: RunnerState) -> bool:
            return (
                runner_matches(
                    self._registry,
                    state,
                    runner_group_id=request.runner_group_id,
                    gpu_type=request.gpu_type,
                    architecture=request.architecture,
                    healthy_only=request.healthy_only,
                )
                and (not request.profile_name or request.profile_name in state.profile_names)
                and not (request.exclude_shared and state.shared)
            )

        matches = (s for s in self._registry.iter_from(after) if keep(s))
        page, last = take_page(matches, size, key=lambda s: s.runner_id)
        return discovery_pb2.ListAvailableRunnersResponse(
            runners=[self.runner_message(s, view) for s in page],
            next_page_token=encode_token(last, filter_fingerprint(filters)) if last else "",
        )

    def get_runner(
        self, request: discovery_pb2.GetAvailableRunnerRequest
    ) -> discovery_pb2.AvailableRunner:
        """GetAvailableRunner: FULL view unless BASIC is asked for explicitly."""
        if not request.runner_id.strip():
            raise invalid_argument("runner_id", "must not be empty")
        view = _view(request.view, discovery_pb2.RUNNER_VIEW_FULL)
        state = self._registry.get(request.runner_id)
        if state is None:
            raise runner_not_found_error(request.runner_id)
        return self.runner_message(state, view)

    # -- profiles -----------------------------------------------------------------------

    def _profile_entries(
        self, after: str, runner_id: str
    ) -> Iterator[tuple[RunnerState, ResolvedProfile]]:
        after_runner, _, after_profile = after.partition(_SEPARATOR)
        if runner_id:
            state = self._registry.get(runner_id)
            runners: Iterable[RunnerState] = (
                [state] if state is not None and runner_id >= after_runner else []
            )
        else:
            runners = self._registry.iter_from(after_runner, inclusive=True)
        for state in runners:
            for profile in sorted(state.profiles, key=lambda p: p.profile_name):
                if state.runner_id == after_runner and profile.profile_name <= after_profile:
                    continue
                yield state, profile

    def list_profiles(
        self, request: discovery_pb2.ListProfilesRequest
    ) -> discovery_pb2.ListProfilesResponse:
        """ListProfiles without the gRPC plumbing (raises :class:`ApiError`)."""
        size = page_size_of(request.page_size)
        filters = (
            request.gpu_type.casefold(),
            request.architecture.casefold(),
            request.exclude_shared,
            request.runner_id,
        )
        after = decode_token(request.page_token, filter_fingerprint(filters))

        def keep(entry: tuple[RunnerState, ResolvedProfile]) -> bool:
            state, profile = entry
            return (
                (not request.gpu_type or _same(request.gpu_type, state.gpu_types_for(profile)))
                and (
                    not request.architecture
                    or _same(request.architecture, state.architectures_for(profile))
                )
                and not (request.exclude_shared and state.shared)
            )

        matches = (e for e in self._profile_entries(after, request.runner_id) if keep(e))
        page, last = take_page(
            matches, size, key=lambda e: f"{e[0].runner_id}{_SEPARATOR}{e[1].profile_name}"
        )
        return discovery_pb2.ListProfilesResponse(
            profiles=[self.profile_message(s, p) for s, p in page],
            next_page_token=encode_token(last, filter_fingerprint(filters)) if last else "",
        )

    def get_profile(self, request: discovery_pb2.GetProfileRequest) -> discovery_pb2.ProfileSummary:
        """GetProfile: on the given runner, else on a healthy runner that has it."""
        name = request.profile_name
        if not name.strip():
            raise invalid_argument("profile_name", "must not be empty")
        if request.runner_id:
            state = self._registry.get(request.runner_id)
            profile = state.profile(name) if state else None
            if state is None or profile is None:
                raise profile_not_found(name, request.runner_id)
            return self.profile_message(state, profile)
        candidates = [(s, p) for s in self._registry.iter_from() if (p := s.profile(name))]
        if not candidates:
            raise profile_not_found(name)
        healthy = [c for c in candidates if self._registry.is_healthy(c[0])]
        state, profile = (healthy or candidates)[0]
        return self.profile_message(state, profile)

    # -- gRPC entry points --------------------------------------------------------------

    async def ListAvailableRunners(
        self, request: discovery_pb2.ListAvailableRunnersRequest, context: Context
    ) -> discovery_pb2.ListAvailableRunnersResponse:
        """See :meth:`list_runners`."""
        try:
            return self.list_runners(request)
        except ApiError as error:
            await abort_with(context, error)

    async def GetAvailableRunner(
        self, request: discovery_pb2.GetAvailableRunnerRequest, context: Context
    ) -> discovery_pb2.AvailableRunner:
        """See :meth:`get_runner`."""
        try:
            return self.get_runner(request)
        except ApiError as error:
            await abort_with(context, error)

    async def ListProfiles(
        self, request: discovery_pb2.ListProfilesRequest, context: Context
    ) -> discovery_pb2.ListProfilesResponse:
        """See :meth:`list_profiles`."""
        try:
            return self.list_profiles(request)
        except ApiError as error:
            await abort_with(context, error)

    async def GetProfile(
        self, request: discovery_pb2.GetProfileRequest, context: Context
    ) -> discovery_pb2.ProfileSummary:
        """See :meth:`get_profile`."""
        try:
            return self.get_profile(request)
        except ApiError as error:
            await abort_with(context, error)
