"""``Sandbox.exec``: run a command, stream its output, feed its stdin (protocol §5).

The wire conversation lives in ``_exec_stream``; this module decides what a *command* means
to its caller: output decoded for the live readers and kept whole for the ``ProcessResult``,
stdin forwarded from a ``StreamWriter``, and a time limit.

The time limit is enforced here, on the client, at exactly ``timeout_seconds``: the call is
then cancelled, which makes the server kill the command, and the caller gets
``SandboxCommandTimeoutError``. The call's gRPC deadline (timeout plus 5 s) stays as the
server's own backstop, as the protocol prescribes.

Unlike the official client, every gRPC status from the stream is translated through
``cwsandbox._error_mapping``, so no raw ``grpc.RpcError`` ever reaches the caller.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import logging
import shlex
from collections.abc import Sequence
from typing import NoReturn

import grpc

from cwsandbox import _loop
from cwsandbox._error_mapping import sandbox_error
from cwsandbox._exec_stream import (
    DEADLINE_SLACK_SECONDS,
    READY_WAIT_SECONDS,
    STDIN_CHUNK_BYTES,
    ExecChannel,
    Exit,
)
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._operation import OperationRef
from cwsandbox._results import ProcessResult
from cwsandbox._streams import StreamReader, StreamWriter
from cwsandbox._transport import Transport
from cwsandbox.exceptions import (
    SandboxCommandTimeoutError,
    SandboxExecutionError,
    SandboxNotRunningError,
    SandboxTimeoutError,
)

__all__ = [
    "STDIN_CHUNK_BYTES",
    "Process",
    "check_command",
    "pump_stdin",
    "run_exec",
    "spawn",
    "with_cwd",
]

_log = logging.getLogger("cwsandbox")


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
        """Stop the command: the stream is cancelled (the server kills it), readers end."""
        cancelled = super().cancel()
        if cancelled:
            # The task may be cancelled before it ever ran; end the streams here too.
            error = SandboxExecutionError(f"exec of {shlex.join(self._command)!r} was cancelled")
            self.stdout._end(error)
            self.stderr._end(error)
            if self.stdin is not None:
                self.stdin.set_exception(error)
        return cancelled

    def __repr__(self) -> str:
        state = "running" if not self._future.done() else f"returncode={self.poll()}"
        return f"<Process {shlex.join(self._command)!r} {state}>"


async def pump_stdin(channel: ExecChannel, stdin: StreamWriter) -> None:
    """Forward a ``StreamWriter`` once the server is ready, then ``close`` + half-close."""
    try:
        await channel.ready.wait()
        while True:
            data = await stdin._get()
            if data is None:
                await channel.close_stdin()
                return
            if not await channel.send_stdin(data):
                return
    except Exception as err:  # the call ended under us; the reading side reports why
        _log.debug("stdin pump stopped: %r", err)


class _Decoder:
    """Incremental UTF-8 for a live reader: a character split across frames stays whole."""

    def __init__(self, reader: StreamReader[str]) -> None:
        self.reader = reader
        self.raw = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> None:
        self.raw += data
        text = self._decoder.decode(data, final)
        if text:
            self.reader._feed(text)


def _rpc_failure(err: grpc.RpcError, command: list[str], timeout: float, sid: str) -> Exception:
    if isinstance(err, grpc.aio.AioRpcError) and err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return _timed_out(command, timeout)
    return sandbox_error(err, operation="exec", sandbox_id=sid)


def _timed_out(command: list[str], timeout: float) -> SandboxCommandTimeoutError:
    return SandboxCommandTimeoutError(
        f"command {shlex.join(command)!r} did not finish within {timeout:g}s"
    )


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
    starting: Lifecycle | None = None,
) -> ProcessResult:
    """Drive one StreamExec call to its end and return the command's result.

    ``starting``: the sandbox may still be starting and the server waits for it (see
    ``Lifecycle.exec_target``); the wait is bounded by the handle's request timeout, like
    the Get it replaces, and ``timeout`` counts from the moment the sandbox runs. If it
    does not run, :class:`_NotStarted` is raised with the output readers left open, for
    the caller to fall back to the Get.
    """
    argv = with_cwd(command, cwd)
    out, err = _Decoder(stdout), _Decoder(stderr)
    pump: asyncio.Task[None] | None = None
    channel: ExecChannel | None = None
    failure: BaseException | None = None
    handed_back = False
    answered = False  # the exit frame came: the server ends the call itself
    loop = asyncio.get_running_loop()
    try:
        if starting is not None:
            channel = await _open_when_running(
                transport,
                sandbox_id,
                argv,
                starting,
                timeout=timeout,
                interactive=stdin is not None,
            )
        async with asyncio.timeout(timeout):
            if channel is None:
                channel = await ExecChannel.open(
                    transport,
                    sandbox_id,
                    argv,
                    deadline=timeout + DEADLINE_SLACK_SECONDS,
                    connect_timeout=connect_timeout,
                    interactive=stdin is not None,
                )
            ready_by = None
            if stdin is not None:
                pump = asyncio.create_task(pump_stdin(channel, stdin))
                ready_by = loop.time() + min(READY_WAIT_SECONDS, timeout)
            while True:
                event = await channel.next(ready_by)
                if isinstance(event, Exit):
                    exit_code = 0 if event.code is None else event.code  # §5.3: no exit = 0
                    answered = event.code is not None and stdin is None
                    break
                (err if event.stderr else out).feed(event.data)
        out.feed(b"", final=True)
        err.feed(b"", final=True)
        result = ProcessResult.from_bytes(bytes(out.raw), bytes(err.raw), exit_code, command)
    except TimeoutError:
        failure = _timed_out(command, timeout)
        raise failure from None
    except grpc.RpcError as rpc_err:
        failure = _rpc_failure(rpc_err, command, timeout, sandbox_id)
        raise failure from None
    except asyncio.CancelledError:
        failure = SandboxExecutionError(f"exec of {shlex.join(command)!r} was cancelled")
        raise
    except _NotStarted:
        handed_back = True  # nothing ran and nothing was read: the caller sends it again
        raise
    except BaseException as other:
        failure = other
        raise
    finally:
        if pump is not None:
            pump.cancel()
        if channel is not None and not answered:
            # Not after an exit without stdin: the server's status follows the exit frame
            # at once, and a cancel would only cost both sides a reset of the stream.
            channel.cancel()
        if not handed_back:
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


class _NotStarted(Exception):
    """A waiting exec was refused before its command ran: ask Get, then maybe send it again."""


async def _open_when_running(
    transport: Transport,
    sandbox_id: str,
    argv: list[str],
    life: Lifecycle,
    *,
    timeout: float,
    interactive: bool,
) -> ExecChannel:
    """Send the exec to a sandbox still starting; return it once the command is on its way.

    The server holds the command until the sandbox runs, then hands it over and says so in
    the answer's headers, with what Get would say of the sandbox (applied to the handle).
    An answer without that header is read by :func:`_refusal`: where nothing ran it raises
    :class:`_NotStarted`, and the caller's Get then reports why, as without the extension.
    The wait is bounded by the request timeout, like that Get's.
    """
    wait = life.request_timeout
    channel = await ExecChannel.open(
        transport,
        sandbox_id,
        argv,
        deadline=wait + timeout + DEADLINE_SLACK_SECONDS,
        connect_timeout=wait,
        interactive=interactive,
        wait_running=True,
    )
    try:
        async with asyncio.timeout(wait):
            seen = await channel.sandbox_seen()
    except TimeoutError:
        channel.cancel()
        raise SandboxTimeoutError(
            f"timed out after {wait:g}s waiting for sandbox {sandbox_id} to run"
        ) from None
    except BaseException:
        channel.cancel()
        raise
    if seen is None:
        try:
            await _refusal(channel)
        finally:
            channel.cancel()
    assert seen is not None
    life.learn_from_exec(seen)
    return channel


#: In-band refusals of a waiting exec that mean its command never ran (the sandbox failed,
#: ended or went away while starting): the caller asks Get what it is and, if it runs after
#: all, sends the command again.
_NOTHING_RAN = frozenset({"SANDBOX_NOT_FOUND", "SANDBOX_NOT_RUNNING"})


async def _refusal(channel: ExecChannel) -> NoReturn:
    """Read why a waiting exec came back without ``SANDBOX_HEADER``; raise accordingly.

    :class:`_NotStarted` only where nothing ran (:data:`_NOTHING_RAN`, or a call the server
    refused outright, e.g. NOT_FOUND: the Get then says the same in the classic words).
    Anything else (a runner lost mid-way, say) may have run the command, which must then
    not be sent again: it is the exec's error, as it would be without the extension.
    """
    try:
        await channel.next()
    except SandboxExecutionError as exc:
        if exc.reason in _NOTHING_RAN:
            raise _NotStarted from None
        raise
    except grpc.RpcError:
        raise _NotStarted from None
    raise SandboxExecutionError(
        "the server answered an exec that waited for its sandbox "
        "without saying that it handed the command over"
    )


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

    async def run(sid: str, starting: Lifecycle | None) -> ProcessResult:
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
            starting=starting,
        )

    def fail_readers(exc: BaseException) -> None:
        for reader in (out, err):
            reader._end(exc if isinstance(exc, Exception) else None)
        if writer is not None:
            writer._fail(exc)

    async def go() -> ProcessResult:
        try:
            sid, waits = await life.exec_target()
        except BaseException as exc:
            fail_readers(exc)
            raise
        if waits:
            try:
                return await run(sid, life)
            except _NotStarted:
                pass  # the sandbox did not run (yet): the Get below says what it is
        try:
            sid = await life.ensure_running()
        except BaseException as exc:
            fail_readers(exc)
            raise
        return await run(sid, None)

    return Process(_loop.submit(go()), argv, out, err, writer)
