"""Running a command in a sandbox over ``GatewayStreamingService/StreamExec`` (protocol §5).

The wire conversation: one ``init`` with the full argv; then, without stdin, an immediate
half-close (the server reads that as stdin EOF); with stdin, the client waits for the
server's ``ready`` frame (at most 5 s) before sending ``stdin`` frames of at most 64 KiB and
finally ``close``. The server answers with ``ready``, ``output`` frames as the command
produces them, and a final ``exit`` (or an in-band ``error``). The only timeout signal is
the call's deadline, the command's ``timeout_seconds`` plus 5 s.

Unlike the official client, every gRPC status from the stream is translated through
``cwsandbox._error_mapping``, so no raw ``grpc.RpcError`` ever reaches the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shlex
from collections.abc import Sequence

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from cwsandbox import _loop
from cwsandbox._error_mapping import sandbox_error
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._operation import OperationRef
from cwsandbox._proto import streaming_pb2 as st
from cwsandbox._results import ProcessResult
from cwsandbox._streams import StreamReader, StreamWriter
from cwsandbox._transport import ExecCall, Transport
from cwsandbox.exceptions import (
    SandboxCommandTimeoutError,
    SandboxExecutionError,
    SandboxNotRunningError,
    SandboxStreamBackpressureError,
    SandboxStreamTruncatedError,
    SandboxTimeoutError,
)

__all__ = [
    "STDIN_CHUNK_BYTES",
    "Process",
    "check_command",
    "run_exec",
    "spawn",
    "with_cwd",
]

_log = logging.getLogger("cwsandbox")

STDIN_CHUNK_BYTES = 64 * 1024
READY_WAIT_SECONDS = 5.0
DEADLINE_SLACK_SECONDS = 5.0
_STDERR = st.ExecStreamOutput.STREAM_TYPE_STDERR
_STDOUT = st.ExecStreamOutput.STREAM_TYPE_STDOUT


def check_command(command: Sequence[str]) -> list[str]:
    """Validate an argv: a non-empty sequence of strings (a bare string is a ``TypeError``)."""
    if isinstance(command, str | bytes):
        raise TypeError("command must be a list of strings, e.g. ['ls', '-l'], not a bare string")
    argv = list(command)
    if not argv:
        raise ValueError("command must not be empty")
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"command arguments must be strings, got {arg!r}")
    return argv


def with_cwd(argv: list[str], cwd: str | None) -> list[str]:
    """Run ``argv`` in ``cwd`` by wrapping it in ``/bin/sh -c "cd <cwd> && exec <argv>"``.

    The protocol has no cwd field, so the directory change happens in the sandbox's shell;
    every word is shell-quoted, so no argument is ever interpreted by the shell.
    """
    if cwd is None:
        return argv
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise ValueError(f"cwd must be an absolute path, got {cwd!r}")
    return ["/bin/sh", "-c", f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"]


class Process(OperationRef[ProcessResult]):
    """A command running in a sandbox: an ``OperationRef`` for its ``ProcessResult``.

    ``stdout``/``stderr`` yield decoded output chunks while it runs; ``stdin`` is a
    ``StreamWriter`` when the command was started with ``stdin=True`` (else ``None``).
    """

    def __init__(
        self,
        future: concurrent.futures.Future[ProcessResult],
        command: list[str],
        stdout: StreamReader[str],
        stderr: StreamReader[str],
        stdin: StreamWriter | None = None,
    ) -> None:
        super().__init__(future)
        self._command = list(command)
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin

    @property
    def command(self) -> list[str]:
        """The argv as given to ``exec``."""
        return list(self._command)

    @property
    def returncode(self) -> int | None:
        """The exit code once the command has finished, else ``None``."""
        return self.poll()

    def poll(self) -> int | None:
        """The exit code if finished successfully, without blocking; else ``None``."""
        future = self._future
        if not future.done() or future.cancelled() or future.exception() is not None:
            return None
        return future.result().returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the command ends and return its exit code."""
        return self.result(timeout).returncode

    def cancel(self) -> bool:
        """Stop waiting for the command: the stream is cancelled and the readers end."""
        cancelled = super().cancel()
        if cancelled:
            # The task may be cancelled before it ever ran; end the streams here too.
            error = SandboxExecutionError(f"exec of {shlex.join(self._command)!r} was cancelled")
            self.stdout._end(error)
            self.stderr._end(error)
            if self.stdin is not None:
                _loop.loop().call_soon_threadsafe(self.stdin._fail, error)
        return cancelled

    def __repr__(self) -> str:
        state = "running" if not self._future.done() else f"returncode={self.poll()}"
        return f"<Process {shlex.join(self._command)!r} {state}>"


def _stream_error(frame: st.ExecStreamError) -> SandboxExecutionError:
    text = f"Exec stream error: {frame.message}"
    if frame.code == "STREAM_BACKPRESSURE":
        return SandboxStreamBackpressureError(text, stream_code=frame.code)
    if frame.code == "STREAM_TRUNCATED":
        return SandboxStreamTruncatedError(text, stream_code=frame.code)
    return SandboxExecutionError(text, reason=frame.code or None)


async def _pump_stdin(call: ExecCall, stdin: StreamWriter, ready: asyncio.Event) -> None:
    """Forward stdin once the server is ready: ≤ 64 KiB frames, then ``close`` + half-close."""
    try:
        await ready.wait()
        while True:
            data = await stdin._get()
            if data is None:
                await call.write(st.ExecStreamRequest(close=st.ExecStreamClose()))
                await call.done_writing()
                return
            for start in range(0, len(data), STDIN_CHUNK_BYTES):
                chunk = data[start : start + STDIN_CHUNK_BYTES]
                await call.write(st.ExecStreamRequest(stdin=st.ExecStreamData(data=chunk)))
    except Exception as err:  # the call ended under us; the reading side reports why
        _log.debug("stdin pump stopped: %r", err)


async def run_exec(
    transport: Transport,
    sandbox_id: str,
    command: list[str],
    *,
    cwd: str | None,
    timeout: float,
    connect_timeout: float,
    check: bool,
    stdout: StreamReader[str],
    stderr: StreamReader[str],
    stdin: StreamWriter | None,
) -> ProcessResult:
    """Drive one StreamExec call to its end and return the command's result."""
    argv = with_cwd(command, cwd)
    out, err = bytearray(), bytearray()
    ready = asyncio.Event()
    pump: asyncio.Task[None] | None = None
    call: ExecCall | None = None
    failure: BaseException | None = None
    try:
        call = await transport.open_exec(
            timeout=timeout + DEADLINE_SLACK_SECONDS, ready_timeout=connect_timeout
        )
        init = st.ExecStreamInit(sandbox_id=sandbox_id, command=argv)
        await call.write(st.ExecStreamRequest(init=init))
        if stdin is None:
            await call.done_writing()
        else:
            pump = asyncio.create_task(_pump_stdin(call, stdin, ready))
        loop = asyncio.get_running_loop()
        ready_by = loop.time() + min(READY_WAIT_SECONDS, timeout)
        exit_code = 0
        while True:
            if stdin is not None and not ready.is_set():
                try:
                    msg = await asyncio.wait_for(call.read(), max(0.0, ready_by - loop.time()))
                except TimeoutError:
                    raise SandboxTimeoutError(
                        "stdin ready signal not received within timeout"
                    ) from None
            else:
                msg = await call.read()
            if msg is EOF:
                break  # ended OK without an exit frame: exit code 0 (protocol §5.3)
            assert isinstance(msg, st.ExecStreamResponse)
            kind = msg.WhichOneof("response")
            if kind == "ready":
                ready.set()
            elif kind == "output":
                frame = msg.output
                if frame.stream_type == _STDERR:
                    err += frame.data
                    stderr._feed(frame.data.decode("utf-8", errors="replace"))
                else:
                    if frame.stream_type != _STDOUT:
                        _log.warning("exec output frame without stream type; treating as stdout")
                    out += frame.data
                    stdout._feed(frame.data.decode("utf-8", errors="replace"))
            elif kind == "exit":
                exit_code = msg.exit.exit_code
                break
            elif kind == "error":
                raise _stream_error(msg.error)
        result = ProcessResult.from_bytes(bytes(out), bytes(err), exit_code, command)
    except grpc.RpcError as rpc_err:
        if isinstance(rpc_err, grpc.aio.AioRpcError) and (
            rpc_err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        ):
            failure = SandboxCommandTimeoutError(
                f"command {shlex.join(command)!r} did not finish within {timeout:g}s"
            )
        else:
            failure = sandbox_error(rpc_err, operation="exec", sandbox_id=sandbox_id)
        raise failure from None
    except asyncio.CancelledError:
        failure = SandboxExecutionError(f"exec of {shlex.join(command)!r} was cancelled")
        raise
    except BaseException as other:
        failure = other
        raise
    finally:
        if pump is not None:
            pump.cancel()
        if call is not None and not call.done():
            call.cancel()
        if stdin is not None:
            stdin._fail(SandboxNotRunningError("the command has ended; its stdin is closed"))
        stdout._end(failure)
        stderr._end(failure)
    if check and result.returncode != 0:
        raise SandboxExecutionError(
            f"Command {shlex.join(command)} failed with exit code {result.returncode}",
            exec_result=result,
        )
    return result


def spawn(
    life: Lifecycle,
    argv: list[str],
    *,
    cwd: str | None,
    check: bool,
    timeout: float,
    connect_timeout: float,
    stdin: bool,
) -> Process:
    """Start ``argv`` on the background loop (waiting for RUNNING first); return its Process."""
    out: StreamReader[str] = StreamReader()
    err: StreamReader[str] = StreamReader()
    writer = StreamWriter() if stdin else None

    async def go() -> ProcessResult:
        try:
            sid = await life.ensure_running()
        except BaseException as exc:
            for reader in (out, err):
                reader._end(exc if isinstance(exc, Exception) else None)
            if writer is not None:
                writer._fail(exc)
            raise
        return await run_exec(
            life.transport,
            sid,
            argv,
            cwd=cwd,
            timeout=timeout,
            connect_timeout=connect_timeout,
            check=check,
            stdout=out,
            stderr=err,
            stdin=writer,
        )

    return Process(_loop.submit(go()), argv, out, err, writer)
