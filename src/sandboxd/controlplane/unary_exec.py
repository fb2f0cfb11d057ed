"""Unary ``GatewayService/Exec``: run one command, answer its output and exit code at once.

Why on StreamExec's plumbing: the exec is bound to one of its runner's idle ``Operate``
streams (``operations.py``) with stdin closed, exactly like a StreamExec without input, so
the runner runs it through the same relay with the same checks (argv and environment sizes
from ``limits.py``, concurrent execs per sandbox and per runner) and the call counts against
its organization's ``concurrent_execs`` quota like a StreamExec. There is no second exec
path; only collecting the output into one answer is here.

The request (v1beta2 ``ExecSandboxRequest``): ``command`` followed by ``args`` is the argv;
``max_timeout_seconds`` (default 300, at most 3600) bounds the run: a command still running
then is killed (ending its stream kills it on the runner) and the call answers
DEADLINE_EXCEEDED with ``CWSANDBOX_COMMAND_TIMEOUT``. ``output_handling``:

* ``BUFFERED`` (or unset): each of stdout and stderr is kept up to ``buffered_max_kib`` KiB
  (default 1 MiB, at most 16 MiB); what the command writes beyond that is read and counted
  (``*_bytes_produced``) but not kept (``*_truncated``), so memory stays bounded and the
  command is never blocked or killed for its output.
* ``DISCARD``: nothing is kept, only counted.
* ``STREAM``: refused (INVALID_ARGUMENT): a unary answer cannot stream; use StreamExec.

Problems the runner reports in-band (the sandbox is paused or stopped, too many execs)
become the matching gRPC status with a ``CWSANDBOX_*`` reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.limits import FieldNames, LimitExceeded, check_exec
from sandboxd.controlplane.operations import Operation, Operations
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.errors import ApiError, invalid_argument
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2, streaming_pb2

DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 3600
DEFAULT_BUFFER_KIB = 1024
MAX_BUFFER_KIB = 16 * 1024
"""Per stream: stdout and stderr together stay within 32 MiB, under every client's message cap."""

_STDERR = streaming_pb2.ExecStreamOutput.STREAM_TYPE_STDERR
_IN_BAND: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "SANDBOX_NOT_FOUND": grpc.StatusCode.FAILED_PRECONDITION,
    "EXEC_LIMIT_EXCEEDED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "RUNNER_OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "RUNNER_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "BACKEND_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class UnaryExecRequest:
    """An ``ExecSandboxRequest``, checked: the argv, the time limit and the output policy."""

    sandbox_id: str
    argv: list[str]
    timeout_seconds: int
    keep_bytes: int  # per stream; 0 with DISCARD


def _argv_field(command_count: int) -> FieldNames:
    def name(index: int) -> str:
        if index < command_count:
            return f"command[{index}]"
        return f"args[{index - command_count}]"

    return FieldNames("command", name, "command")


def parse_exec_request(request: gateway_pb2.ExecSandboxRequest) -> UnaryExecRequest:
    """Check every field, naming the bad one (INVALID_ARGUMENT)."""
    if not request.command or not request.command[0]:
        raise invalid_argument("command", "must name the program to run")
    argv = [*request.command, *request.args]
    for index, part in enumerate(argv):
        if "\x00" in part:
            raise invalid_argument(_argv_field(len(request.command)).arg(index), "contains NUL")
    try:
        check_exec(argv, {}, _argv_field(len(request.command)))
    except LimitExceeded as exc:
        raise exc.api_error() from None
    timeout = request.max_timeout_seconds
    if timeout < 0 or timeout > MAX_TIMEOUT_SECONDS:
        raise invalid_argument(
            "max_timeout_seconds", f"must be from 0 (default) to {MAX_TIMEOUT_SECONDS}"
        )
    policy = request.output_handling
    if policy == gateway_pb2.OUTPUT_POLICY_STREAM:
        raise invalid_argument(
            "output_handling", "a unary Exec cannot stream its output; use StreamExec"
        )
    if policy not in gateway_pb2.OutputPolicy.values():
        raise invalid_argument("output_handling", f"unknown OutputPolicy value {policy}")
    if request.buffered_max_kib > MAX_BUFFER_KIB:
        raise invalid_argument(
            "buffered_max_kib", f"must be at most {MAX_BUFFER_KIB} (16 MiB per stream)"
        )
    keep = (request.buffered_max_kib or DEFAULT_BUFFER_KIB) * 1024
    if policy == gateway_pb2.OUTPUT_POLICY_DISCARD:
        keep = 0
    return UnaryExecRequest(
        request.sandbox_id, argv, timeout or DEFAULT_TIMEOUT_SECONDS, keep_bytes=keep
    )


@dataclass
class _Kept:
    """One output stream: what is kept (up to the cap) and how much was produced."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    produced: int = 0

    def add(self, chunk: bytes) -> None:
        self.produced += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.produced > len(self.data)


def _in_band(error: streaming_pb2.ExecStreamError) -> ApiError:
    code = _IN_BAND.get(error.code, grpc.StatusCode.FAILED_PRECONDITION)
    reason = f"CWSANDBOX_{error.code}" if error.code else ""
    return ApiError(code, error.message or "the exec failed on the runner", reason=reason)


class UnaryExec:
    """Runs ``ExecSandboxRequest`` s on the operation streams StreamExec uses."""

    def __init__(self, lifecycle: Lifecycle, operations: Operations) -> None:
        self._lifecycle = lifecycle
        self._operations = operations

    async def run(self, request: UnaryExecRequest) -> gateway_pb2.ExecSandboxResponse:
        """Run the command to its end (or its time limit) and answer what it produced."""
        record = await self._lifecycle.record(request.sandbox_id)
        quotas = self._lifecycle.quotas
        quotas.acquire_exec(record.owner_org)
        try:
            return await self._run(record, request)
        finally:
            quotas.release_exec(record.owner_org)

    async def _run(
        self, record: SandboxRecord, request: UnaryExecRequest
    ) -> gateway_pb2.ExecSandboxResponse:
        link = self._lifecycle.running_link(record)
        open_frame = runner_pb2.OperationDown(
            exec=runner_pb2.OpenExec(
                sandbox_id=record.sandbox_id, command=request.argv, stdin_closed=True
            )
        )
        operation = await self._operations.open(record.runner_id, link, open_frame)
        stdout, stderr = _Kept(request.keep_bytes), _Kept(request.keep_bytes)
        try:
            async with asyncio.timeout(request.timeout_seconds):
                code = await _collect(operation, stdout, stderr)
        except TimeoutError:
            raise ApiError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the command did not finish within {request.timeout_seconds} s and was killed",
                reason="CWSANDBOX_COMMAND_TIMEOUT",
                metadata={"sandbox_id": record.sandbox_id},
            ) from None
        finally:
            operation.close()  # the runner kills a process whose stream ends before its exit
        result = gateway_pb2.ExecResponse(
            stdout=bytes(stdout.data),
            stderr=bytes(stderr.data),
            exit_code=code,
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            stdout_bytes_produced=stdout.produced,
            stderr_bytes_produced=stderr.produced,
        )
        return gateway_pb2.ExecSandboxResponse(result=result)


async def _collect(operation: Operation, stdout: _Kept, stderr: _Kept) -> int:
    """The runner's frames until ``exit`` (its code) or an in-band ``error`` (raised)."""
    while True:
        frame = await operation.receive()
        if frame is None:
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE,
                "the runner's exec stream ended without an exit",
                reason="CWSANDBOX_RUNNER_UNAVAILABLE",
            )
        response = frame.exec
        kind = response.WhichOneof("response")
        if kind == "output":
            target = stderr if response.output.stream_type == _STDERR else stdout
            target.add(response.output.data)
        elif kind == "exit":
            return int(response.exit.exit_code)
        elif kind == "error":
            raise _in_band(response.error)
