"""Stand-in DiscoveryService and real ``grpc.RpcError`` factory for the client unit tests.

The server here is a stand-in for client-side unit tests only. It serves fixed data from an
in-process ``grpc.server`` on 127.0.0.1 (port chosen by the OS), applies the protocol's
server-side filters, pages results, records every request with its metadata, and can be told
to fail, stall or loop. It is *not* sandboxd: end-to-end tests against the real control plane
live in ``tests/e2e``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.v1beta2 import discovery_pb2 as pb
from sandboxd_protocol.v1beta2 import discovery_pb2_grpc as pb_grpc
from tests.support.ports import free_port

GiB = 1024**3

RUNNERS = [
    pb.AvailableRunner(
        runner_id="r1",
        runner_group_id="g1",
        tags=["local"],
        healthy=True,
        profile_names=["default", "gpu"],
        connected_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        capabilities=pb.RunnerCapabilitySummary(
            max_cpu_millicores=8000,
            max_memory_bytes=16 * GiB,
            supported_architectures=["amd64"],
            available_storage_classes=["local"],
        ),
        resources=pb.RunnerResourceSummary(
            available_cpu_millicores=6000, available_memory_bytes=8 * GiB, running_sandboxes=2
        ),
    ),
    pb.AvailableRunner(
        runner_id="r2",
        runner_group_id="g2",
        healthy=False,
        profile_names=["default"],
        capabilities=pb.RunnerCapabilitySummary(
            max_cpu_millicores=4000, max_memory_bytes=8 * GiB, supported_architectures=["arm64"]
        ),
        resources=pb.RunnerResourceSummary(
            available_cpu_millicores=1000, available_memory_bytes=2 * GiB
        ),
    ),
    pb.AvailableRunner(
        runner_id="r3",
        runner_group_id="g1",
        healthy=True,
        profile_names=["gpu"],
        capabilities=pb.RunnerCapabilitySummary(
            max_cpu_millicores=32000,
            max_memory_bytes=128 * GiB,
            max_gpu_count=4,
            supported_gpu_types=["h100"],
            supported_architectures=["amd64"],
            supports_privileged=True,
        ),
        resources=pb.RunnerResourceSummary(
            available_cpu_millicores=16000,
            available_memory_bytes=64 * GiB,
            available_gpu_count=2,
            running_sandboxes=1,
        ),
    ),
    # r4 never reports resources, even in the FULL view: capacity filters must drop it.
    pb.AvailableRunner(
        runner_id="r4",
        runner_group_id="g2",
        healthy=True,
        profile_names=["default"],
        capabilities=pb.RunnerCapabilitySummary(max_cpu_millicores=2000, max_memory_bytes=GiB),
    ),
]


def _profile(name: str, runner: str, ingress: list[str], egress: list[str], **kw: Any) -> Any:
    return pb.ProfileSummary(
        profile_name=name,
        runner_id=runner,
        service_exposure_modes=[pb.ServiceExposureMode(name=m) for m in ingress],
        egress_modes=[pb.EgressMode(name=m) for m in egress],
        **kw,
    )


PROFILES = [
    _profile("default", "r1", ["public"], ["internet"], supported_architectures=["amd64"]),
    _profile("gpu", "r1", [], ["none"], supported_architectures=["amd64"]),
    _profile("default", "r2", [], ["internet"], supported_architectures=["arm64"]),
    _profile(
        "gpu",
        "r3",
        ["public", "private"],
        ["none"],
        supported_gpu_types=["h100"],
        supported_architectures=["amd64"],
    ),
    _profile("default", "r4", [], ["none"]),
]


@dataclass
class Recorded:
    """One request the stand-in received."""

    method: str
    request: Message
    metadata: dict[str, str]
    time_remaining: float | None


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailers


def status_with_details(code: grpc.StatusCode, message: str, *details: Message) -> bytes:
    """Serialize a google.rpc.Status carrying ``details`` (packed into Any)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status.SerializeToString()


def abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, message: str, blob: bytes | None = None
) -> None:
    """Abort the RPC, attaching ``blob`` as grpc-status-details-bin when given."""
    trailers = (("grpc-status-details-bin", blob),) if blob is not None else ()
    context.abort_with_status(_Status(code, message, trailers))


@dataclass
class StandInDiscovery(pb_grpc.DiscoveryServiceServicer):
    """DiscoveryService over fixed data, with knobs for failure modes."""

    runners: list[Any] = field(default_factory=lambda: list(RUNNERS))
    profiles: list[Any] = field(default_factory=lambda: list(PROFILES))
    page_size: int = 2
    delay: float = 0.0
    loop_tokens: bool = False
    endless: bool = False
    failures: dict[str, tuple[grpc.StatusCode, str, bytes | None]] = field(default_factory=dict)
    calls: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        copy = type(request)()
        copy.CopyFrom(request)
        with self.lock:
            self.calls.append(Recorded(method, copy, md, context.time_remaining()))
        if self.delay:
            time.sleep(self.delay)
        if method in self.failures:
            code, message, blob = self.failures[method]
            abort(context, code, message, blob)

    def requests(self, method: str) -> list[Any]:
        return [c.request for c in self.calls if c.method == method]

    def _page(self, items: list[Any], request: Any) -> tuple[list[Any], str]:
        if self.loop_tokens:
            return items[:1], "same-token"
        start = int(request.page_token or 0)
        if self.endless:
            return items[:1], str(start + 1)
        size = min(request.page_size or self.page_size, self.page_size)
        end = start + size
        return items[start:end], (str(end) if end < len(items) else "")

    def ListAvailableRunners(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListAvailableRunners", request, context)
        matches = [
            r
            for r in self.runners
            if (not request.runner_group_id or r.runner_group_id == request.runner_group_id)
            and (not request.profile_name or request.profile_name in r.profile_names)
            and (not request.gpu_type or request.gpu_type in r.capabilities.supported_gpu_types)
            and (
                not request.architecture
                or request.architecture in r.capabilities.supported_architectures
            )
        ]
        if request.view != pb.RUNNER_VIEW_FULL:
            matches = [_without_resources(r) for r in matches]
        page, token = self._page(matches, request)
        return pb.ListAvailableRunnersResponse(runners=page, next_page_token=token)

    def GetAvailableRunner(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetAvailableRunner", request, context)
        for runner in self.runners:
            if runner.runner_id == request.runner_id:
                return runner
        abort(context, grpc.StatusCode.NOT_FOUND, f"runner {request.runner_id} not found")
        return None  # pragma: no cover

    def ListProfiles(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListProfiles", request, context)
        matches = [
            p
            for p in self.profiles
            if (not request.runner_id or p.runner_id == request.runner_id)
            and (not request.gpu_type or request.gpu_type in p.supported_gpu_types)
            and (not request.architecture or request.architecture in p.supported_architectures)
        ]
        page, token = self._page(matches, request)
        return pb.ListProfilesResponse(profiles=page, next_page_token=token)

    def GetProfile(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetProfile", request, context)
        for p in self.profiles:
            if p.profile_name == request.profile_name and (
                not request.runner_id or p.runner_id == request.runner_id
            ):
                return p
        abort(context, grpc.StatusCode.NOT_FOUND, f"profile {request.profile_name} not found")
        return None  # pragma: no cover


def _without_resources(runner: Any) -> Any:
    copy = pb.AvailableRunner()
    copy.CopyFrom(runner)
    copy.ClearField("resources")
    return copy


# --- a method that fails on demand, to obtain real grpc.RpcError objects -------------------

_FAIL_METHOD = "/sandboxd.test.Failer/Fail"


def _fail_handler(request: bytes, context: grpc.ServicerContext) -> bytes:
    status = status_pb2.Status.FromString(request)
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    if status.message.startswith("garbage:"):
        abort(context, code, status.message, b"\xff\x00not-a-status")
    abort(context, code, status.message, request if status.details else None)
    return b""  # pragma: no cover


@dataclass
class StandIn:
    """A running stand-in server and the URL to reach it."""

    servicer: StandInDiscovery
    url: str
    channel_factory: Callable[[], grpc.Channel]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """Start the stand-in server and point ``CWSANDBOX_BASE_URL`` at it; no API key set."""
    servicer = StandInDiscovery()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_DiscoveryServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "sandboxd.test.Failer",
                {"Fail": grpc.unary_unary_rpc_method_handler(_fail_handler)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("CWSANDBOX_BASE_URL", url)
    monkeypatch.delenv("CWSANDBOX_API_KEY", raising=False)
    try:
        yield StandIn(servicer, url, lambda: grpc.insecure_channel(f"127.0.0.1:{port}"))
    finally:
        server.stop(grace=None)


@pytest.fixture
def rpc_error(standin: StandIn) -> Callable[..., grpc.RpcError]:
    """Make a real ``grpc.RpcError``: ``rpc_error(code, message, *details)``.

    With details, the error carries a google.rpc.Status trailer holding them; a message
    starting with ``garbage:`` carries an undecodable trailer instead.
    """

    def make(code: grpc.StatusCode, message: str, *details: Message) -> grpc.RpcError:
        request = status_with_details(code, message, *details)
        with standin.channel_factory() as channel:
            call = channel.unary_unary(_FAIL_METHOD)
            try:
                call(request, timeout=10)
            except grpc.RpcError as err:
                return err
        raise AssertionError("the failer did not fail")

    return make


def error_info(reason: str, domain: str = "cwsandbox.com", **metadata: str) -> Message:
    """An ErrorInfo detail."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)


def retry_info(seconds: int) -> Message:
    """A RetryInfo detail asking to wait ``seconds``."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = seconds
    return info


def bad_request(*violations: tuple[str, str]) -> Message:
    """A BadRequest detail naming invalid fields."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL on which nothing listens (the port was bound, then released)."""
    return f"http://127.0.0.1:{free_port()}"
