"""``coreweave.sandbox.v1.DiscoveryService``: runners with live capacity (protocol/v1.md §3).

Filters are server-side, as the client expects: runner group, GPU type, architecture and
health as in v1beta2 (shared :func:`runner_matches`), plus ``service_visibility`` (a runner
qualifies when its default profile and its backend can publish ports that way: PUBLIC as
``public`` ingress, PRIVATE as ``internal``). There are no profiles in v1.

``organization_id`` is the caller's organization (the one its API key belongs to): every
runner is listed with it, and GetAvailableRunner with any other organization answers
exactly like an unknown runner, so one organization learns nothing through another's id.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.config.models import IngressType
from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.discovery import runner_matches
from sandboxd.controlplane.pagination import (
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
    take_page,
)
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.errors import ApiError, abort_with, invalid_argument, runner_not_found
from sandboxd_protocol.v1 import discovery_pb2, discovery_pb2_grpc, sandbox_pb2

D = discovery_pb2
V = sandbox_pb2
Context = grpc.aio.ServicerContext[Any, Any]
_VISIBILITY_OF = {
    IngressType.PUBLIC.value: V.VISIBILITY_PUBLIC,
    IngressType.INTERNAL.value: V.VISIBILITY_PRIVATE,
}


def _view(requested: int, default: int) -> int:
    if requested == D.RUNNER_VIEW_UNSPECIFIED:
        return default
    if requested not in (D.RUNNER_VIEW_BASIC, D.RUNNER_VIEW_FULL):
        raise invalid_argument("view", f"unknown RunnerView value {requested}")
    return requested


def visibilities(state: RunnerState) -> list[sandbox_pb2.Visibility]:
    """Service visibilities a sandbox placed on this runner (default profile) may use."""
    default = next((p for p in state.profiles if p.is_default), None)
    ingress = default.spec.network.ingress if default is not None else None
    if ingress is None:
        return []
    kinds = {mode.type.value for mode in ingress.modes.values()}
    return [
        _VISIBILITY_OF[kind]
        for kind in sorted(kinds)
        if kind in _VISIBILITY_OF and state.support.allows_ingress(kind)
    ]


class V1DiscoveryService(discovery_pb2_grpc.DiscoveryServiceServicer):
    """Answers v1 discovery queries from the live :class:`RunnerRegistry`."""

    def __init__(self, registry: RunnerRegistry) -> None:
        self._registry = registry

    def runner_message(self, state: RunnerState, view: int, organization: str) -> D.AvailableRunner:
        """The wire form of a runner; FULL view always carries ``resources``."""
        caps = state.capabilities
        connected_at = timestamp_pb2.Timestamp()
        connected_at.FromDatetime(state.connected_at)
        message = D.AvailableRunner(
            runner_id=state.runner_id,
            runner_group_id=state.runner_group_id,
            tags=state.tags,
            healthy=self._registry.is_healthy(state),
            connected_at=connected_at,
            is_shared=state.shared,
            organization_id=organization,
            capabilities=D.RunnerCapabilitySummary(
                # Shared runners do not disclose capacity (admin-model.md §1).
                max_cpu_millicores=0 if state.shared else caps.cpu_millicores,
                max_memory_bytes=0 if state.shared else caps.memory_bytes,
                max_gpu_count=0 if state.shared else caps.gpu_count,
                supported_gpu_types=caps.gpu_types,
                supported_architectures=caps.architectures,
                supports_privileged=caps.supports_privileged,
                available_storage_classes=caps.storage_classes,
                supported_service_visibilities=visibilities(state),
            ),
        )
        if view == D.RUNNER_VIEW_FULL:
            live = state.available
            message.resources.CopyFrom(
                D.RunnerResourceSummary()
                if state.shared
                else D.RunnerResourceSummary(
                    available_cpu_millicores=live.available_cpu_millicores,
                    available_memory_bytes=live.available_memory_bytes,
                    available_gpu_count=live.available_gpu_count,
                    running_sandboxes=live.running_sandboxes,
                )
            )
        return message

    def list_runners(
        self, request: D.ListAvailableRunnersRequest
    ) -> D.ListAvailableRunnersResponse:
        """ListAvailableRunners without the gRPC plumbing (raises :class:`ApiError`)."""
        size = page_size_of(request.page_size)
        view = _view(request.view, D.RUNNER_VIEW_BASIC)
        visibility = request.service_visibility
        if visibility not in V.Visibility.values():
            raise invalid_argument("service_visibility", f"unknown Visibility value {visibility}")
        filters = (
            request.runner_group_id,
            request.gpu_type.casefold(),
            request.architecture.casefold(),
            request.healthy_only,
            visibility,
        )
        after = decode_token(request.page_token, filter_fingerprint(filters))

        def keep(state: RunnerState) -> bool:
            return runner_matches(
                self._registry,
                state,
                runner_group_id=request.runner_group_id,
                gpu_type=request.gpu_type,
                architecture=request.architecture,
                healthy_only=request.healthy_only,
            ) and (not visibility or visibility in visibilities(state))

        organization = current_caller().organization
        matches = (s for s in self._registry.iter_from(after) if keep(s))
        page, last = take_page(matches, size, key=lambda s: s.runner_id)
        return D.ListAvailableRunnersResponse(
            runners=[self.runner_message(s, view, organization) for s in page],
            next_page_token=encode_token(last, filter_fingerprint(filters)) if last else "",
        )

    def get_runner(self, request: D.GetAvailableRunnerRequest) -> D.AvailableRunner:
        """GetAvailableRunner: FULL view unless BASIC is asked for explicitly."""
        if not request.runner_id.strip():
            raise invalid_argument("runner_id", "must not be empty")
        if not request.organization_id.strip():
            raise invalid_argument("organization_id", "must not be empty")
        view = _view(request.view, D.RUNNER_VIEW_FULL)
        caller = current_caller()
        state = self._registry.get(request.runner_id)
        if state is None or request.organization_id != caller.organization:
            raise runner_not_found(request.runner_id)
        return self.runner_message(state, view, caller.organization)

    async def ListAvailableRunners(
        self, request: D.ListAvailableRunnersRequest, context: Context
    ) -> D.ListAvailableRunnersResponse:
        """See :meth:`list_runners`."""
        try:
            return self.list_runners(request)
        except ApiError as error:
            await abort_with(context, error)

    async def GetAvailableRunner(
        self, request: D.GetAvailableRunnerRequest, context: Context
    ) -> D.AvailableRunner:
        """See :meth:`get_runner`."""
        try:
            return self.get_runner(request)
        except ApiError as error:
            await abort_with(context, error)
