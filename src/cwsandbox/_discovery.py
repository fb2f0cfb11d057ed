"""Discovery: which runners and profiles exist, what they offer, how much room they have.

These are the four DiscoveryService calls of the discovery guide. They are synchronous:
each opens its own channel, pages through results under one shared deadline, and closes
the channel again. Filters the protocol marks as server-side are sent in the request;
the others (capacity minimums, networking modes) are applied here, exactly as the official
client does, so both clients return the same answer from the same server.

Two sandboxd extensions, both keyword-only: ``timeout`` (seconds for the whole call,
default ``cwsandbox._config.DISCOVERY_TIMEOUT_SECONDS``) and ``base_url`` (instead of
``$CWSANDBOX_BASE_URL``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from cwsandbox import _config
from cwsandbox._channel import open_channel, unary_call
from cwsandbox._config import Endpoint, resolve_endpoint
from cwsandbox._error_mapping import discovery_error
from cwsandbox._pagination import Deadline, collect_pages
from cwsandbox._types import Profile, Runner
from cwsandbox.exceptions import DiscoveryError
from sandboxd_protocol.v1beta2 import discovery_pb2 as pb

__all__ = ["get_profile", "get_runner", "list_profiles", "list_runners"]

_SERVICE = "/coreweave.sandbox.v1beta2.DiscoveryService/"
PAGE_SIZE = 100

ResponseT = TypeVar("ResponseT", bound=Message)


class _Call:
    """One discovery operation: its endpoint, its deadline and its name for messages."""

    def __init__(self, operation: str, base_url: str | None, timeout: float | None) -> None:
        self.operation = operation
        self.endpoint: Endpoint = resolve_endpoint(base_url)
        seconds = _config.DISCOVERY_TIMEOUT_SECONDS if timeout is None else timeout
        self.deadline = Deadline(seconds)

    def rpc(
        self,
        channel: grpc.Channel,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        runner_id: str | None = None,
        profile_name: str | None = None,
    ) -> ResponseT:
        """Make one RPC with the time left, translating every gRPC error."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise DiscoveryError(
                f"{self.operation} timed out after {self.deadline.seconds:g}s talking to the "
                f"sandboxd control plane at {self.endpoint.base_url}"
            )
        try:
            return unary_call(channel, _SERVICE + method, request, response_type, timeout=remaining)
        except grpc.RpcError as err:
            raise discovery_error(
                err,
                target=self.endpoint.base_url,
                operation=self.operation,
                runner_id=runner_id,
                profile_name=profile_name,
            ) from None

    def all_profiles(self, channel: grpc.Channel, request: pb.ListProfilesRequest) -> list[Profile]:
        """Page through ListProfiles, re-sending ``request``'s filters on every page."""

        def fetch(token: str) -> tuple[list[Profile], str]:
            request.page_token = token
            page = self.rpc(
                channel,
                "ListProfiles",
                request,
                pb.ListProfilesResponse,
                runner_id=request.runner_id or None,
            )
            return [Profile.from_proto(p) for p in page.profiles], page.next_page_token

        return collect_pages(fetch, operation=self.operation, error_type=DiscoveryError)


def _check_text(name: str, value: str | None) -> None:
    """Refuse blank strings: proto3 cannot tell "" from unset, so they would match everything."""
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")


def _check_minimum(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _exposure_mode(ingress_mode: str | None, service_exposure_mode: str | None) -> str | None:
    """Merge the guide's ``ingress_mode`` with the official alias ``service_exposure_mode``."""
    _check_text("ingress_mode", ingress_mode)
    _check_text("service_exposure_mode", service_exposure_mode)
    if (
        ingress_mode is not None
        and service_exposure_mode is not None
        and ingress_mode != service_exposure_mode
    ):
        raise ValueError(
            "ingress_mode and service_exposure_mode are the same filter; "
            f"got different values {ingress_mode!r} and {service_exposure_mode!r}"
        )
    return ingress_mode if ingress_mode is not None else service_exposure_mode


def _profile_matches(profile: Profile, exposure: str | None, egress: str | None) -> bool:
    if exposure is not None and exposure not in {m.name for m in profile.service_exposure_modes}:
        return False
    return egress is None or egress in {m.name for m in profile.egress_modes}


def list_profiles(
    *,
    gpu_type: str | None = None,
    architecture: str | None = None,
    runner_id: str | None = None,
    ingress_mode: str | None = None,
    egress_mode: str | None = None,
    service_exposure_mode: str | None = None,
    timeout: float | None = None,
    base_url: str | None = None,
) -> list[Profile]:
    """List profiles, one entry per (runner, profile) pair, to decide where a sandbox goes.

    ``gpu_type``, ``architecture`` and ``runner_id`` are filtered by the server;
    ``ingress_mode`` (alias ``service_exposure_mode``) and ``egress_mode`` by exact mode name
    here. All filters combine with AND. Raises ``DiscoveryError`` on network or service
    errors and ``CWSandboxAuthenticationError`` when credentials are refused.
    """
    for name, value in (
        ("gpu_type", gpu_type),
        ("architecture", architecture),
        ("runner_id", runner_id),
        ("egress_mode", egress_mode),
    ):
        _check_text(name, value)
    exposure = _exposure_mode(ingress_mode, service_exposure_mode)
    call = _Call("list_profiles", base_url, timeout)
    request = pb.ListProfilesRequest(
        gpu_type=gpu_type or "",
        architecture=architecture or "",
        runner_id=runner_id or "",
        page_size=PAGE_SIZE,
    )
    with open_channel(call.endpoint) as channel:
        profiles = call.all_profiles(channel, request)
    return [p for p in profiles if _profile_matches(p, exposure, egress_mode)]


def get_profile(
    profile_name: str,
    *,
    runner_id: str | None = None,
    timeout: float | None = None,
    base_url: str | None = None,
) -> Profile:
    """Fetch one profile by name, optionally on one runner.

    Without ``runner_id`` the server picks one runner that offers the profile. Raises
    ``ProfileNotFoundError`` when no such profile exists (also when the runner does not),
    ``ValueError`` for a blank name or runner id.
    """
    if not isinstance(profile_name, str) or not profile_name.strip():
        raise ValueError("profile_name must not be empty")
    _check_text("runner_id", runner_id)
    call = _Call("get_profile", base_url, timeout)
    request = pb.GetProfileRequest(profile_name=profile_name, runner_id=runner_id or "")
    with open_channel(call.endpoint) as channel:
        summary = call.rpc(
            channel,
            "GetProfile",
            request,
            pb.ProfileSummary,
            runner_id=runner_id,
            profile_name=profile_name,
        )
    return Profile.from_proto(summary)


def _capacity_filter(
    cpu: int | None, memory: int | None, gpus: int | None
) -> Callable[[Runner], bool]:
    def keep(runner: Runner) -> bool:
        res = runner.resources
        if res is None:
            return cpu is None and memory is None and gpus is None
        return (
            (cpu is None or res.available_cpu_millicores >= cpu)
            and (memory is None or res.available_memory_bytes >= memory)
            and (gpus is None or res.available_gpu_count >= gpus)
        )

    return keep


def list_runners(
    *,
    runner_group_id: str | None = None,
    profile_name: str | None = None,
    gpu_type: str | None = None,
    architecture: str | None = None,
    include_resources: bool = False,
    min_available_cpu_millicores: int | None = None,
    min_available_memory_bytes: int | None = None,
    min_available_gpu_count: int | None = None,
    ingress_mode: str | None = None,
    egress_mode: str | None = None,
    service_exposure_mode: str | None = None,
    timeout: float | None = None,
    base_url: str | None = None,
) -> list[Runner]:
    """List registered runners (healthy or not) with their capabilities and profiles.

    ``runner_group_id``, ``profile_name``, ``gpu_type`` and ``architecture`` are filtered by
    the server. ``include_resources`` asks for live capacity (``Runner.resources``); any
    ``min_available_*`` filter implies it and keeps only runners whose reported free
    capacity meets every minimum. ``ingress_mode`` (alias ``service_exposure_mode``) and
    ``egress_mode`` keep runners with that mode on any of their profiles, found with one
    extra ListProfiles pass under the same deadline. All filters combine with AND.
    """
    for name, value in (
        ("runner_group_id", runner_group_id),
        ("profile_name", profile_name),
        ("gpu_type", gpu_type),
        ("architecture", architecture),
        ("egress_mode", egress_mode),
    ):
        _check_text(name, value)
    exposure = _exposure_mode(ingress_mode, service_exposure_mode)
    minimums = (min_available_cpu_millicores, min_available_memory_bytes, min_available_gpu_count)
    for name, minimum in zip(
        ("min_available_cpu_millicores", "min_available_memory_bytes", "min_available_gpu_count"),
        minimums,
        strict=True,
    ):
        _check_minimum(name, minimum)
    full = include_resources or any(m is not None for m in minimums)

    call = _Call("list_runners", base_url, timeout)
    request = pb.ListAvailableRunnersRequest(
        runner_group_id=runner_group_id or "",
        profile_name=profile_name or "",
        gpu_type=gpu_type or "",
        architecture=architecture or "",
        page_size=PAGE_SIZE,
        view=pb.RUNNER_VIEW_FULL if full else pb.RUNNER_VIEW_BASIC,
    )

    def fetch(token: str) -> tuple[list[Runner], str]:
        request.page_token = token
        page = call.rpc(channel, "ListAvailableRunners", request, pb.ListAvailableRunnersResponse)
        return [Runner.from_proto(r) for r in page.runners], page.next_page_token

    with open_channel(call.endpoint) as channel:
        runners = collect_pages(fetch, operation=call.operation, error_type=DiscoveryError)
        runners = [r for r in runners if _capacity_filter(*minimums)(r)]
        if runners and (exposure is not None or egress_mode is not None):
            profiles = call.all_profiles(channel, pb.ListProfilesRequest(page_size=PAGE_SIZE))
            exposing = {p.runner_id for p in profiles if _profile_matches(p, exposure, None)}
            egressing = {p.runner_id for p in profiles if _profile_matches(p, None, egress_mode)}
            runners = [r for r in runners if r.runner_id in exposing and r.runner_id in egressing]
    return runners


def get_runner(
    runner_id: str, *, timeout: float | None = None, base_url: str | None = None
) -> Runner:
    """Fetch one runner by id, always with live resources (FULL view).

    Raises ``RunnerNotFoundError`` (with ``.runner_id``) when the server does not know it,
    ``ValueError`` for a blank id.
    """
    if not isinstance(runner_id, str) or not runner_id.strip():
        raise ValueError("runner_id must not be empty")
    call = _Call("get_runner", base_url, timeout)
    request = pb.GetAvailableRunnerRequest(runner_id=runner_id, view=pb.RUNNER_VIEW_FULL)
    with open_channel(call.endpoint) as channel:
        runner = call.rpc(
            channel, "GetAvailableRunner", request, pb.AvailableRunner, runner_id=runner_id
        )
    return Runner.from_proto(runner)
