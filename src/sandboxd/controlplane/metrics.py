"""Prometheus metrics of the control plane, served on ``--metrics-listen``.

Why this shape: an operator's dashboards and alerts need counts that are exact and labels
that stay few. So

* state that already lives in memory (runners by health, sandboxes by status and profile,
  open operation streams, the reconcilers' queues, runner capacity) is read when Prometheus
  scrapes (:class:`PlatformCollector`), never kept twice;
* events are counted where they pass one narrow point: every sandbox record change
  (:meth:`ControlPlaneMetrics.observe_record`, chained onto the records' ``on_change``),
  every RPC (:class:`MetricsInterceptor`: calls, codes, error reasons, durations, placement
  rejections by the checks that failed), every store call (:func:`timed_store`);
* no label carries a sandbox id, an organization or free text: reasons are the API's
  ``CWSANDBOX_*`` codes or a small fixed set of classes, methods are the RPC names.

Every control plane has its own :class:`prometheus_client.CollectorRegistry`, so two in one
process (tests) never mix their numbers.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.start_moves import StartMoves

__all__ = [
    "ControlPlaneMetrics",
    "MetricsInterceptor",
    "PlatformCollector",
    "failure_class",
    "timed_store",
]

T = TypeVar("T")

# v1beta2 SandboxStatus numbers → label values (gateway.proto).
STATUS_NAMES = {
    0: "unspecified",
    1: "creating",
    2: "running",
    3: "completed",
    4: "failed",
    5: "terminated",
    6: "pending",
    7: "paused",
    8: "unknown",
    9: "terminating",
}
RUNNING, FAILED = 2, 4
ENDED_REMEMBERED = 65536
TERMINAL = frozenset({3, 4, 5})

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip
"""Seconds: from a millisecond (an exec of ``true``) to five minutes (a long command)."""

# Failure reasons are free text from runners and the control plane; a label needs a small
# fixed set. First match wins; anything else is "other".
_FAILURE_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("oom_killed", re.compile(r"oom|out of memory", re.I)),
    ("start_timed_out", re.compile(r"never (started|came)|start.*(timed out|timeout)", re.I)),
    ("runner_revoked", re.compile(r"revoked", re.I)),
    ("runner_removed", re.compile(r"runner was removed", re.I)),
    ("runner_lost", re.compile(r"runner (lost|gone|restarted)|unknown to its runner", re.I)),
    ("image", re.compile(r"image", re.I)),
    ("start_failed", re.compile(r"start|create", re.I)),
)


def failure_class(reason: str) -> str:
    """The fixed label a failure reason falls under (``oom_killed``, ..., ``other``)."""
    for name, pattern in _FAILURE_CLASSES:
        if pattern.search(reason):
            return name
    return "other"


class ControlPlaneMetrics:
    """The control plane's registry and the counters fed by record changes and RPCs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.created = Counter(
            "sandboxd_sandboxes_created", "Sandboxes placed and recorded.", ["profile"], registry=r
        )
        self.ended = Counter(
            "sandboxd_sandboxes_ended",
            "Sandboxes that reached a terminal status, by that status.",
            ["status", "profile"],
            registry=r,
        )
        self.failures = Counter(
            "sandboxd_sandbox_failures",
            "Sandboxes that ended FAILED, by the class of their reason.",
            ["reason"],
            registry=r,
        )
        self.time_to_running = Histogram(
            "sandboxd_sandbox_create_seconds",
            "From a sandbox's Start to the runner reporting it running.",
            ["profile"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpcs = Counter(
            "sandboxd_grpc_server_handled",
            "RPCs the control plane answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "sandboxd_grpc_server_handling_seconds",
            "How long RPCs took, by method (StreamExec: the whole exec).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "sandboxd_api_errors",
            "Errors answered, by status code and CWSANDBOX_* reason.",
            ["code", "reason"],
            registry=r,
        )
        self.rejections = Counter(
            "sandboxd_placement_rejections",
            "Start requests no runner could host, by reason and by each request field a "
            "check failed on (one rejection counts once per distinct field).",
            ["reason", "field"],
            registry=r,
        )
        self.connection_attempts = Counter(
            "sandboxd_connection_attempts",
            "Outbound connection attempts of sandboxes that runners reported, by the host "
            "firewall's decision.",
            ["decision"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "sandboxd_store_call_seconds",
            "Sandbox store calls (database transactions), by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._seen: dict[str, int] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def observe_record(self, record: SandboxRecord) -> None:
        """Count one record change: a new sandbox, its first RUNNING, its end.

        A record's first write (``version == 1``) is its creation; one first seen later was
        created before this process started (a restart) and is not counted again. Ended ids
        are remembered (the newest :data:`ENDED_REMEMBERED`) so later writes of an ended
        record (a delete, say) never count its end twice.
        """
        status, sandbox_id = record.status, record.sandbox_id
        if sandbox_id in self._ended:
            return
        before = self._seen.get(sandbox_id)
        if before == status:
            return
        profile = record.profile_name or "none"
        if before is None and record.version == 1:
            self.created.labels(profile).inc()
        if status == RUNNING and record.started_at is not None:
            took = (record.started_at - record.created_at).total_seconds()
            self.time_to_running.labels(profile).observe(max(took, 0.0))
        if status not in TERMINAL:
            self._seen[sandbox_id] = status
            return
        self._seen.pop(sandbox_id, None)
        self._ended[sandbox_id] = None
        if len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        self.ended.labels(STATUS_NAMES[status], profile).inc()
        if status == FAILED:
            self.failures.labels(failure_class(record.status_reason)).inc()

    def observe_rpc(
        self, method: str, code: grpc.StatusCode, seconds: float, trailers: Any
    ) -> None:
        """Count one answered RPC, and its error's reason and field violations if it failed."""
        self.rpcs.labels(method, code.name).inc()
        self.rpc_seconds.labels(method).observe(seconds)
        if code is grpc.StatusCode.OK:
            return
        reason, fields = _error_details(trailers)
        self.errors.labels(code.name, reason or "none").inc()
        if reason in ("CWSANDBOX_NO_SUITABLE_RUNNER", "CWSANDBOX_PROFILE_MISMATCH"):
            for field in sorted({_field_name(f) for f in fields}) or ["none"]:
                self.rejections.labels(reason, field).inc()


def _field_name(field: str) -> str:
    """``mounted_files[3].mount_path`` → ``mounted_files[].mount_path`` (bounded labels)."""
    return re.sub(r"\[\d+\]", "[]", field)[:80]


def _error_details(trailers: Any) -> tuple[str, list[str]]:
    """The ErrorInfo reason and BadRequest fields in a status-details trailer, if any."""
    blob = None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            blob = value
    if not isinstance(blob, bytes):
        return "", []
    reason, fields = "", []
    try:
        status = status_pb2.Status.FromString(blob)
    except Exception:  # a malformed trailer of ours would be a bug; never fail the call
        return "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return reason, fields


class PlatformCollector(Collector):
    """Gauges read from the control plane's memory when Prometheus scrapes."""

    def __init__(
        self,
        registry: RunnerRegistry,
        records: SandboxRecords,
        operations: Operations,
        reconcilers: Reconcilers,
        moves: StartMoves | None = None,
    ) -> None:
        self._registry = registry
        self._records = records
        self._operations = operations
        self._reconcilers = reconcilers
        self._moves = moves

    def collect(self) -> Iterator[Metric]:
        """Runners by state, sandboxes by status and profile, streams, queues, capacity."""
        runners = GaugeMetricFamily(
            "sandboxd_runners", "Known runners, by state.", labels=["state"]
        )
        counts = {"healthy": 0, "unhealthy": 0, "cordoned": 0, "backed_off": 0}
        capacity = {"allocatable": [0, 0], "requested": [0, 0]}
        for state in self._registry.iter_from():
            healthy = self._registry.is_healthy(state)
            counts["healthy" if healthy else "unhealthy"] += 1
            counts["cordoned"] += int(getattr(state, "cordoned", False))
            counts["backed_off"] += int(self._registry.backed_off(state))
            if healthy:
                capacity["allocatable"][0] += state.capabilities.cpu_millicores
                capacity["allocatable"][1] += state.capabilities.memory_bytes
                capacity["requested"][0] += state.reserved_cpu_millicores
                capacity["requested"][1] += state.reserved_memory_bytes
        for name, value in counts.items():
            runners.add_metric([name], value)
        yield runners
        cpu = GaugeMetricFamily(
            "sandboxd_runner_cpu_cores",
            "CPU of healthy runners: allocatable, and requested by their sandboxes.",
            labels=["kind"],
        )
        memory = GaugeMetricFamily(
            "sandboxd_runner_memory_bytes",
            "Memory of healthy runners: allocatable, and requested by their sandboxes.",
            labels=["kind"],
        )
        for kind, (millicores, nbytes) in capacity.items():
            cpu.add_metric([kind], millicores / 1000)
            memory.add_metric([kind], nbytes)
        yield cpu
        yield memory
        sandboxes = GaugeMetricFamily(
            "sandboxd_sandboxes",
            "Sandboxes that have not ended, by status and profile.",
            labels=["status", "profile"],
        )
        by_key: dict[tuple[str, str], int] = {}
        for record in self._records.live():
            key = (STATUS_NAMES.get(record.status, "unknown"), record.profile_name or "none")
            by_key[key] = by_key.get(key, 0) + 1
        for (status, profile), value in sorted(by_key.items()):
            sandboxes.add_metric([status, profile], value)
        yield sandboxes
        yield GaugeMetricFamily(
            "sandboxd_active_operations",
            "Open exec, log and file streams between clients and runners.",
            value=len(self._operations),
        )
        yield GaugeMetricFamily(
            "sandboxd_reconciler_queue_depth",
            "Sandboxes waiting for their runner's reconciler.",
            value=self._reconcilers.queue_depth(),
        )
        if self._moves is not None:
            yield CounterMetricFamily(
                "sandboxd_start_moves",
                "Starts a runner failed for its own reasons that another runner took over.",
                value=self._moves.moved,
            )


# (handler attribute, how to make a handler of that kind, whether the response streams)
_HANDLER_KINDS: tuple[tuple[str, Callable[..., Any], bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Times and counts every RPC, and reads the reason of each error it answered."""

    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the method's behaviour; the handler itself is unchanged."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        for kind, make, streams in _HANDLER_KINDS:
            behaviour = getattr(handler, kind)
            if behaviour:
                wrap = self._streaming if streams else self._unary
                return make(  # type: ignore[no-any-return]
                    wrap(method, behaviour),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler  # pragma: no cover - every handler has one of the four

    def _done(self, method: str, context: Any, started: float, failed: bool) -> None:
        code = _code(context, failed)
        trailers = context.trailing_metadata() if code is not grpc.StatusCode.OK else ()
        self._metrics.observe_rpc(method, code, time.perf_counter() - started, trailers)

    def _unary(self, method: str, behaviour: Any) -> Any:
        async def run(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), True
            try:
                result = await behaviour(request, context)
                failed = False
                return result
            finally:
                self._done(method, context, started, failed)

        return run

    def _streaming(self, method: str, behaviour: Any) -> Any:
        async def run(request: Any, context: Any) -> Any:
            started, failed, gone = time.perf_counter(), True, False
            try:
                outcome = behaviour(request, context)
                if hasattr(outcome, "__aiter__"):
                    async for item in outcome:
                        yield item
                else:  # a handler that writes with context.write() and returns
                    await outcome
                failed = False
            except (GeneratorExit, asyncio.CancelledError):
                gone = True  # the client went away (or ended its call) before the end
                raise
            finally:
                if gone:
                    self._count(method, grpc.StatusCode.CANCELLED, started)
                else:
                    self._done(method, context, started, failed)

        return run

    def _count(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.observe_rpc(method, code, time.perf_counter() - started, ())


def _code(context: Any, failed: bool) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio gives the integer value on some versions
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class _TimedStore:
    """A proxy whose methods are the store's, each call timed into a histogram."""

    def __init__(self, store: object, histogram: Histogram) -> None:
        self._store = store
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute
        child = self._histogram.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - started)

        return timed


def timed_store(store: T, metrics: ControlPlaneMetrics) -> T:
    """``store`` with every public method call timed (``sandboxd_store_call_seconds``)."""
    return cast(T, _TimedStore(store, metrics.store_seconds))
