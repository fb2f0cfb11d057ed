"""Files of any size, streamed over StreamExec with small shell scripts (protocol §5.4).

Unary AddFile/RetrieveFile carry one message of at most 32 MiB. Anything larger runs a
script in the sandbox instead, with the file's bytes as the command's stdin or stdout:

* reading: ``/bin/sh`` reports the file's size on stderr (``stat``), then ``exec cat``;
  output frames go straight to the caller, so memory stays bounded by the reader's limit;
  fewer bytes than ``stat`` reported is a ``CWSANDBOX_FILE_TRUNCATED`` error;
* writing: ``/bin/sh`` creates the parent directories (as unary AddFile does), runs
  ``cat > "$1"`` on stdin, then prints the written size with ``wc -c``, which must equal
  what was sent.

The image therefore needs ``/bin/sh``, ``cat``, ``stat``, ``wc`` and ``mkdir``. Failures
are classified from the tools' own messages into the same ``CWSANDBOX_FILE_*`` reasons the
unary calls use, so a caller sees one ``SandboxFileError`` whichever path ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from cwsandbox._error_mapping import sandbox_error
from cwsandbox._exec_stream import READY_WAIT_SECONDS, ExecChannel, Exit
from cwsandbox._lifecycle import Lifecycle
from cwsandbox.exceptions import SandboxFileError, SandboxRequestTimeoutError

__all__ = ["READ_SCRIPT", "WRITE_SCRIPT", "classify", "stream_read", "stream_write"]

READ_SCRIPT = (
    's=$(stat -L -c %s -- "$1" 2>/dev/null) && [ -f "$1" ] && echo "cwsandbox-size:$s" >&2\n'
    'exec cat -- "$1"\n'
)
WRITE_SCRIPT = (
    "case $1 in */*) d=${1%/*} ;; *) d= ;; esac\n"
    'if [ -n "$d" ] && [ ! -d "$d" ]; then mkdir -p -- "$d" || exit 1; fi\n'
    'cat > "$1" || exit 1\n'
    'wc -c < "$1"\n'
)
_SIZE = re.compile(r"^cwsandbox-size:(\d+)$", re.MULTILINE)
#: How much of a script's stderr is kept for the error message.
_STDERR_KEEP = 16 * 1024
# The writer exits as soon as it reads end-of-input, which can reach us before the task that
# sent that end-of-input has itself returned; it is given this long to report its count.
_PUMP_SETTLE_SECONDS = 10.0
_CONNECT_TIMEOUT = 300.0

#: Receives each chunk; returns False when nobody wants more (the read then stops).
Sink = Callable[[bytes], Awaitable[bool]]


def classify(stderr: str) -> str:
    """The ``CWSANDBOX_FILE_*`` reason for a failed ``cat``/``sh``/``mkdir``, from its message."""
    text = stderr.lower()
    if "is a directory" in text:
        return "CWSANDBOX_FILE_IS_DIRECTORY"
    if any(
        s in text
        for s in ("no such file", "not a directory", "directory nonexistent", "file exists")
    ):
        return "CWSANDBOX_FILE_NOT_FOUND"
    if any(s in text for s in ("permission denied", "read-only file system", "not permitted")):
        return "CWSANDBOX_FILE_PERMISSION_DENIED"
    return "CWSANDBOX_FILE_IO_FAILED"


def _message(stderr: str, exit_code: int | None) -> str:
    lines = [line for line in stderr.splitlines() if line and not _SIZE.match(line)]
    if lines:
        return lines[-1]
    return f"exit status {exit_code}" if exit_code is not None else "ended without exit status"


def _file_error(verb: str, path: str, stderr: str, exit_code: int | None) -> SandboxFileError:
    reason = classify(stderr) if exit_code is not None else "CWSANDBOX_FILE_IO_FAILED"
    return SandboxFileError(
        f"Failed to {verb} file '{path}': {_message(stderr, exit_code)}",
        filepath=path,
        reason=reason,
        metadata={"filepath": path},
    )


def _translate(
    err: grpc.RpcError, verb: str, path: str, sid: str, timeout: float | None
) -> Exception:
    if isinstance(err, grpc.aio.AioRpcError) and err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return SandboxRequestTimeoutError(
            f"{verb} of '{path}' did not finish within {timeout or 0:g}s"
        )
    return sandbox_error(err, operation=f"{verb}_file", sandbox_id=sid, filepath=path)


async def _open(
    life: Lifecycle, script: str, name: str, path: str, *, timeout: float | None, stdin: bool
) -> tuple[str, ExecChannel]:
    sid = await life.ensure_running()
    channel = await ExecChannel.open(
        life.transport,
        sid,
        ["/bin/sh", "-c", script, name, path],
        deadline=timeout,
        connect_timeout=min(_CONNECT_TIMEOUT, timeout or _CONNECT_TIMEOUT),
        interactive=stdin,
    )
    return sid, channel


async def stream_read(life: Lifecycle, path: str, timeout: float | None, sink: Sink) -> int:
    """Stream ``path`` out of the sandbox into ``sink``; return how many bytes it got."""
    sid = life.state.sandbox_id or ""
    channel: ExecChannel | None = None
    stderr = ""
    received = 0
    try:
        sid, channel = await _open(
            life, READ_SCRIPT, "cwsandbox-read-file", path, timeout=timeout, stdin=False
        )
        while True:
            event = await channel.next()
            if isinstance(event, Exit):
                break
            if event.stderr:
                stderr = (stderr + event.data.decode("utf-8", "replace"))[-_STDERR_KEEP:]
            elif event.data:
                received += len(event.data)
                if not await sink(event.data):
                    return received  # the reader was closed: stop, the call is cancelled
    except grpc.RpcError as err:
        raise _translate(err, "read", path, sid, timeout) from None
    finally:
        if channel is not None:
            channel.cancel()
    if event.code != 0:
        raise _file_error("read", path, stderr, event.code)
    match = _SIZE.search(stderr)
    if match is not None and received < int(match.group(1)):
        raise SandboxFileError(
            f"Failed to read file '{path}': got {received} of {match.group(1)} bytes",
            filepath=path,
            reason="CWSANDBOX_FILE_TRUNCATED",
            metadata={"filepath": path, "size_bytes": match.group(1)},
        )
    return received


async def stream_write(
    life: Lifecycle, path: str, chunks: AsyncIterator[bytes], timeout: float | None
) -> int:
    """Stream ``chunks`` into ``path`` in the sandbox; return the number of bytes written."""
    sid = life.state.sandbox_id or ""
    channel: ExecChannel | None = None
    pump: asyncio.Task[int] | None = None
    out, stderr = b"", ""
    try:
        sid, channel = await _open(
            life, WRITE_SCRIPT, "cwsandbox-write-file", path, timeout=timeout, stdin=True
        )
        pump = asyncio.create_task(_pump(channel, chunks))
        ready_by = asyncio.get_running_loop().time() + READY_WAIT_SECONDS
        while True:
            event = await channel.next(ready_by)
            if isinstance(event, Exit):
                break
            if event.stderr:
                stderr = (stderr + event.data.decode("utf-8", "replace"))[-_STDERR_KEEP:]
            else:
                out += event.data
        if event.code == 0 and not pump.done():
            await asyncio.wait({pump}, timeout=_PUMP_SETTLE_SECONDS)
    except grpc.RpcError as err:
        raise _translate(err, "write", path, sid, timeout) from None
    finally:
        if channel is not None:
            channel.cancel()
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
    if event.code != 0:
        raise _file_error("write", path, stderr, event.code)
    sent = pump.result() if pump.done() and not pump.cancelled() else -1
    written = out.decode().strip()
    if sent < 0 or not written.isdigit() or int(written) != sent:
        raise SandboxFileError(
            f"Failed to write file '{path}': wrote {written or '?'} of {sent} bytes",
            filepath=path,
            reason="CWSANDBOX_FILE_TRUNCATED",
            metadata={"filepath": path},
        )
    return sent


async def _pump(channel: ExecChannel, chunks: AsyncIterator[bytes]) -> int:
    """Send every chunk as stdin, then close; the byte count, for the size check."""
    sent = 0
    try:
        await channel.ready.wait()
        async for chunk in chunks:
            if not await channel.send_stdin(chunk):
                return -1
            sent += len(chunk)
        await channel.close_stdin()
        return sent
    except grpc.RpcError:
        return -1  # the call ended under us; the reading side reports why
    except Exception as err:  # e.g. the source raised: abort the write and report that
        channel.abort(err)
        return -1
