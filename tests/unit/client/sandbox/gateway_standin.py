"""Stand-in GatewayService + GatewayStreamingService for the client-side unit tests.

This is a stand-in for client-side unit tests only, not sandboxd: it keeps sandboxes as
records in memory, records every request (with metadata, deadline and arrival time) and lets
a test script what Get, Stop, exec and the file calls answer. End-to-end tests against the
real control plane are written separately (``tests/e2e``).

It listens on 127.0.0.1 on a port the OS picks and is a plain ``grpc.server`` on threads, so
the client under test (which runs its own event loop thread) talks to it over real HTTP/2.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from sandboxd_protocol.v1beta2 import discovery_pb2_grpc as disc_grpc
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc as gw_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from sandboxd_protocol.v1beta2 import streaming_pb2_grpc as st_grpc
from tests.unit.client.client_standin import (
    StandInDiscovery,
    abort,
    error_info,
    status_with_details,
)

S = gw.SandboxStatus
TERMINAL = {S.SANDBOX_STATUS_COMPLETED, S.SANDBOX_STATUS_FAILED, S.SANDBOX_STATUS_TERMINATED}

#: A scripted failure: (code, message, serialized google.rpc.Status or None).
Failure = tuple[grpc.StatusCode, str, bytes | None]
#: A scripted exec: gets the init and the request iterator, yields responses.
ExecScript = Callable[[st.ExecStreamInit, Iterator[st.ExecStreamRequest]], Iterator[Any]]
#: A scripted log stream: gets the init and the rest of the requests, yields responses.
LogsScript = Callable[[st.LogStreamInit, Iterator[st.LogStreamRequest]], Iterator[Any]]
READY = st.ExecStreamResponse(ready=st.StreamingExecReady(session_id="s1"))


def failure(code: grpc.StatusCode, message: str, reason: str | None = None, **md: str) -> Failure:
    """A scripted gRPC error, with an ErrorInfo(cwsandbox.com, reason) when ``reason`` given."""
    blob = status_with_details(code, message, error_info(reason, **md)) if reason else None
    return (code, message, blob)


@dataclass
class Recorded:
    """One request the stand-in received (for streams: every frame, in order)."""

    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None
    at: float
    #: The client's end of the connection (``ipv4:127.0.0.1:PORT``): one per channel.
    peer: str = ""


@dataclass
class Box:
    """One sandbox as the stand-in remembers it."""

    sandbox_id: str
    start: gw.StartSandboxRequest
    status: int = S.SANDBOX_STATUS_PENDING
    exit_code: int | None = None
    #: Statuses Get returns next, one per call, before falling back to ``status``.
    script: list[tuple[int, int | None]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    #: What the status becomes after Stop (and the exit code that goes with it).
    after_stop: tuple[int, int | None] = (S.SANDBOX_STATUS_COMPLETED, 0)
    #: Set when ``status`` is changed with :meth:`set_status` (wakes a held Get).
    changed: threading.Event = field(default_factory=threading.Event)

    def set_status(self, status: int) -> None:
        """Change the status now, as a runner's report would (a held Get answers at once)."""
        self.status = status
        self.changed.set()


def canned_exec(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
    """Default exec: ``echo`` prints its args, ``cat`` echoes stdin, ``false`` exits 1.

    Everything else prints ``ran: <argv>``. Output comes only after the client half-closed
    (or sent ``close``), so a client that forgets to half-close runs into its deadline.
    """
    yield READY
    argv = list(init.command)
    stdin = b""
    for req in requests:
        if req.HasField("stdin"):
            stdin += req.stdin.data
        elif req.HasField("close"):
            break
    if argv and argv[0] in ("cat", "/bin/cat"):
        for i in range(0, len(stdin), 4096):
            yield out(stdin[i : i + 4096])
        yield st.ExecStreamResponse(exit=st.ExecStreamExit(exit_code=0))
        return
    if argv and argv[0] == "false":
        yield st.ExecStreamResponse(exit=st.ExecStreamExit(exit_code=1))
        return
    text = " ".join(argv[1:]) + "\n" if argv and argv[0] == "echo" else f"ran: {argv}\n"
    yield out(text.encode())
    yield st.ExecStreamResponse(exit=st.ExecStreamExit(exit_code=0))


def out(data: bytes | str, stderr: bool = False) -> st.ExecStreamResponse:
    """An output frame."""
    kind = (
        st.ExecStreamOutput.STREAM_TYPE_STDERR if stderr else st.ExecStreamOutput.STREAM_TYPE_STDOUT
    )
    raw = data.encode() if isinstance(data, str) else data
    return st.ExecStreamResponse(output=st.ExecStreamOutput(stream_type=kind, data=raw))


def exit_frame(code: int) -> st.ExecStreamResponse:
    """An exit frame."""
    return st.ExecStreamResponse(exit=st.ExecStreamExit(exit_code=code))


class StandInGateway(gw_grpc.GatewayServiceServicer, st_grpc.GatewayStreamingServiceServicer):
    """In-memory GatewayService and GatewayStreamingService with scripting knobs."""

    def __init__(self) -> None:
        self.boxes: dict[str, Box] = {}
        self.calls: list[Recorded] = []
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        #: Failures to raise on the next calls of a method, consumed in order.
        self.failures: dict[str, list[Failure]] = {}
        #: Initial Get script for every new sandbox, e.g. [(CREATING, None), (RUNNING, None)].
        self.start_script: list[tuple[int, int | None]] = [(S.SANDBOX_STATUS_RUNNING, None)]
        self.exec_script: ExecScript = canned_exec
        self.logs_script: LogsScript | None = None
        #: Unary file calls above this size answer CWSANDBOX_FILE_TOO_LARGE (§6).
        self.max_file_bytes: int | None = None
        self.page_size = 1
        self.loop_tokens = False
        self.stop_success = True
        self.delete_success = True
        self.file_failure: str | None = None  # "success_false" or a CWSANDBOX_FILE_* reason
        self.get_not_found_after_stop = False
        #: What Get says beside a FAILED status (the server's reason).
        self.failed_reason = ""
        #: Hold a Get of a starting sandbox this long, or until its status changes (as
        #: sandboxd does); 0: answer at once, as the protocol's servers do.
        self.hold_get_seconds = 0.0
        #: Trailing metadata of Start: what a server offers beyond v1beta2 (sandboxd says
        #: ``sandboxd-features: exec-waits-running``); none by default, as public servers.
        self.start_trailers: tuple[tuple[str, str], ...] = ()

    # --- helpers ---------------------------------------------------------------------------

    def _record(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        copy = type(request)()
        copy.CopyFrom(request)
        with self.lock:
            self.calls.append(
                Recorded(
                    method, copy, md, context.time_remaining(), time.monotonic(), context.peer()
                )
            )
            pending = self.failures.get(method)
            scripted = pending.pop(0) if pending else None
        if scripted is not None:
            abort(context, *scripted)

    def requests(self, method: str) -> list[Any]:
        """The requests (or stream frames) received for ``method``, oldest first."""
        with self.lock:
            return [c.request for c in self.calls if c.method == method]

    def recorded(self, method: str) -> list[Recorded]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def fail(self, method: str, *failures: Failure) -> None:
        """Make the next calls of ``method`` fail with ``failures``, in order."""
        with self.lock:
            self.failures.setdefault(method, []).extend(failures)

    def add_box(self, status: int = S.SANDBOX_STATUS_RUNNING, **kw: Any) -> Box:
        """Create a sandbox record directly (as if started by someone else)."""
        sid = f"sb-{next(self.ids)}"
        box = Box(sid, gw.StartSandboxRequest(**kw), status=status)
        self.boxes[sid] = box
        return box

    def _box(self, sandbox_id: str, context: grpc.ServicerContext) -> Box:
        box = self.boxes.get(sandbox_id)
        if box is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"sandbox {sandbox_id} not found")
        assert box is not None
        return box

    # --- GatewayService ----------------------------------------------------------------------

    def Start(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Start", request, context)
        sid = f"sb-{next(self.ids)}"
        box = Box(sid, request, script=list(self.start_script))
        self.boxes[sid] = box
        if self.start_trailers:
            context.set_trailing_metadata(self.start_trailers)
        return gw.StartSandboxResponse(
            sandbox_id=sid,
            service_address="10.0.0.1:8080" if request.network.exposed_ports else "",
            exposed_ports=[gw.Port(container_port=p) for p in request.network.exposed_ports],
            applied_ingress_mode=request.network.ingress_mode,
            applied_egress_mode=request.network.egress_mode,
            requested_resource_limits=request.resource_limits,
            requested_resource_requests=request.resource_requests,
        )

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Get", request, context)
        box = self._box(request.sandbox_id, context)
        if box.script:
            box.status, box.exit_code = box.script.pop(0)
        starting = (S.SANDBOX_STATUS_PENDING, S.SANDBOX_STATUS_CREATING)
        if self.hold_get_seconds and box.status in starting:
            box.changed.clear()  # held as sandboxd holds it: until the status changes
            if box.status in starting:
                box.changed.wait(self.hold_get_seconds)
        resp = gw.GetSandboxResponse(
            sandbox_id=box.sandbox_id,
            sandbox_status=box.status,
            runner_id="r1",
            profile_id="default",
            runner_group_id="g1",
        )
        if box.exit_code is not None:
            resp.exit_code = box.exit_code
        if box.status == S.SANDBOX_STATUS_FAILED:
            resp.status_reason = self.failed_reason
        return resp

    def Stop(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Stop", request, context)
        box = self._box(request.sandbox_id, context)
        if not self.stop_success:
            return gw.StopSandboxResponse(success=False, error_message="runner refused")
        if box.status not in TERMINAL:
            box.script = [(S.SANDBOX_STATUS_TERMINATING, None), box.after_stop]
        if self.get_not_found_after_stop:
            del self.boxes[box.sandbox_id]
        return gw.StopSandboxResponse(success=True)

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Delete", request, context)
        self._box(request.sandbox_id, context)
        if not self.delete_success:
            return gw.DeleteSandboxResponse(success=False, error_message="in use")
        del self.boxes[request.sandbox_id]
        return gw.DeleteSandboxResponse(success=True)

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("List", request, context)
        terminal_filter = request.status in TERMINAL
        matches = [
            b
            for b in self.boxes.values()
            if set(request.tags) <= set(b.start.tags)
            and (not request.status or b.status == request.status)
            and (request.include_stopped or terminal_filter or b.status not in TERMINAL)
        ]
        start = int(request.page_token or 0)
        page = matches[start : start + self.page_size]
        end = start + self.page_size
        if self.loop_tokens:
            return gw.ListSandboxesResponse(next_page_token="1")
        return gw.ListSandboxesResponse(
            sandboxes=[
                gw.SandboxInfo(sandbox_id=b.sandbox_id, sandbox_status=b.status, runner_id="r1")
                for b in page
            ],
            next_page_token=str(end) if end < len(matches) else "",
        )

    def AddFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("AddFile", request, context)
        box = self._box(request.sandbox_id, context)
        self._check_size(len(request.file_contents), request.filepath, context)
        if self.file_failure == "success_false":
            return gw.AddFileSandboxResponse(success=False, error_message="disk full")
        if self.file_failure:
            abort(context, *failure(grpc.StatusCode.PERMISSION_DENIED, "no", self.file_failure))
        box.files[request.filepath] = request.file_contents
        return gw.AddFileSandboxResponse(success=True)

    def RetrieveFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("RetrieveFile", request, context)
        box = self._box(request.sandbox_id, context)
        if self.file_failure == "success_false":
            return gw.RetrieveFileSandboxResponse(success=False, error_message="no such file")
        if self.file_failure or request.filepath not in box.files:
            reason = self.file_failure or "CWSANDBOX_FILE_NOT_FOUND"
            code = grpc.StatusCode.NOT_FOUND
            abort(context, *failure(code, f"{request.filepath}: missing", reason))
        self._check_size(len(box.files[request.filepath]), request.filepath, context)
        return gw.RetrieveFileSandboxResponse(
            success=True, file_contents=box.files[request.filepath]
        )

    def _check_size(self, size: int, path: str, context: grpc.ServicerContext) -> None:
        cap = self.max_file_bytes
        if cap is not None and size > cap:
            code, reason = grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_FILE_TOO_LARGE"
            meta = {"filepath": path, "size_bytes": str(size), "max_size_bytes": str(cap)}
            abort(context, *failure(code, f"{path} is too large", reason, **meta))

    # --- GatewayStreamingService -------------------------------------------------------------

    def StreamExec(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        first = next(request_iterator)
        self._record("StreamExec", first, context)

        def rest() -> Iterator[Any]:
            for req in request_iterator:
                self._record("StreamExec", req, context)
                yield req
            self._record("StreamExec", st.ExecStreamRequest(), context)  # marks half-close

        yield from self.exec_script(first.init, rest())

    def StreamLogs(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        first = next(request_iterator)
        self._record("StreamLogs", first, context)

        def rest() -> Iterator[Any]:
            for req in request_iterator:
                self._record("StreamLogs", req, context)
                yield req
            self._record("StreamLogs", st.LogStreamRequest(), context)  # marks half-close

        if self.logs_script is None:
            abort(context, grpc.StatusCode.UNIMPLEMENTED, "StreamLogs is not implemented")
            return
        yield from self.logs_script(first.init, rest())


@dataclass
class Gateway:
    """A running stand-in and the URL to reach it."""

    servicer: StandInGateway
    url: str


def start_gateway() -> tuple[grpc.Server, Gateway]:
    """Start a stand-in on 127.0.0.1:0 (with the discovery stand-in too); caller stops it."""
    servicer = StandInGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    disc_grpc.add_DiscoveryServiceServicer_to_server(StandInDiscovery(), server)
    gw_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    st_grpc.add_GatewayStreamingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, Gateway(servicer, f"http://127.0.0.1:{port}")
