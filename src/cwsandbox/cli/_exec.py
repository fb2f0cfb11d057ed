"""``cwsandbox exec`` and ``cwsandbox sh``: run something in a sandbox from the terminal.

``exec`` relays the command's stdout and stderr as raw bytes, in the order the server sent
them (so binary output can be redirected to a file intact), and exits with the command's
exit code. ``-i`` forwards local stdin. ``sh`` opens a terminal: with an interactive stdin
it switches the local terminal to raw mode and follows window-size changes.
"""

from __future__ import annotations

import asyncio
import shlex

import click
import grpc

from cwsandbox import _loop
from cwsandbox._error_mapping import sandbox_error
from cwsandbox._exec import check_command, pump_stdin
from cwsandbox._exec_stream import READY_WAIT_SECONDS, ExecChannel, Exit
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._streams import StreamReader, StreamWriter
from cwsandbox.cli._common import INTERRUPTED, attach, exit_with
from cwsandbox.cli._tty import forward_stdin, raw_terminal, write_out
from cwsandbox.exceptions import SandboxNotRunningError

__all__ = ["COMMANDS"]

#: Output frames that may wait unwritten before the sandbox is slowed down.
_OUTPUT_FRAMES = 256
#: Options go before the id; everything after it belongs to the remote command, so
#: ``exec ID python -i`` passes ``-i`` to python.
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _argv(command: tuple[str, ...]) -> list[str]:
    """The remote command, without the ``--`` that may separate it from the id."""
    return list(command[1:] if command[:1] == ("--",) else command)


async def _relay(
    life: Lifecycle,
    argv: list[str],
    output: StreamReader[tuple[int, bytes]],
    stdin: StreamWriter | None,
) -> int:
    """Run ``argv`` and put ``(fd, bytes)`` frames into ``output``; return the exit code."""
    channel: ExecChannel | None = None
    pump: asyncio.Task[None] | None = None
    failure: BaseException | None = None
    sid = life.state.sandbox_id or ""
    try:
        sid = await life.ensure_running()
        channel = await ExecChannel.open(
            life.transport,
            sid,
            argv,
            deadline=None,
            connect_timeout=life.request_timeout,
            interactive=stdin is not None,
        )
        ready_by = None
        if stdin is not None:
            pump = asyncio.create_task(pump_stdin(channel, stdin))
            ready_by = asyncio.get_running_loop().time() + READY_WAIT_SECONDS
        while True:
            event = await channel.next(ready_by)
            if isinstance(event, Exit):
                return 0 if event.code is None else event.code
            if event.data:
                await output._put((2 if event.stderr else 1, event.data))
    except grpc.RpcError as err:
        failure = sandbox_error(err, operation="exec", sandbox_id=sid)
        raise failure from None
    except BaseException as exc:
        failure = None if isinstance(exc, asyncio.CancelledError) else exc
        raise
    finally:
        if pump is not None:
            pump.cancel()
        if channel is not None:
            channel.cancel()
        if stdin is not None:
            stdin._fail(SandboxNotRunningError("the command has ended"))
        output._end(failure)


@click.command("exec", context_settings=_PASS_THROUGH)
@click.argument("sandbox_id", metavar="ID")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
@click.option("--interactive", "-i", is_flag=True, help="Forward local stdin to the command.")
@click.option("--cwd", metavar="DIR", help="Run the command in this (absolute) directory.")
@click.pass_context
def exec_command(
    ctx: click.Context,
    sandbox_id: str,
    command: tuple[str, ...],
    interactive: bool,
    cwd: str | None,
) -> None:
    """Run CMD in a sandbox, streaming its output; exit with its exit code.

    Options go before ID: `cwsandbox exec -i ID -- python -i`.
    """
    argv = check_command(_argv(command))
    if cwd is not None:
        if not cwd.startswith("/"):
            raise click.BadParameter("must be an absolute path", param_hint="--cwd")
        argv = ["/bin/sh", "-c", f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"]
    handle = attach(ctx, sandbox_id)
    output: StreamReader[tuple[int, bytes]] = StreamReader(limit=_OUTPUT_FRAMES)
    stdin = StreamWriter() if interactive else None
    future = _loop.submit(_relay(handle._life, argv, output, stdin))
    if stdin is not None:
        forward_stdin(stdin)
    try:
        for fd, data in output:
            write_out(data, fd)
        code = future.result()
    except KeyboardInterrupt:
        future.cancel()  # the call is cancelled, so the server kills the command
        exit_with(INTERRUPTED)
    exit_with(code)


@click.command("sh", context_settings=_PASS_THROUGH)
@click.argument("sandbox_id", metavar="ID")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@click.pass_context
def sh_command(ctx: click.Context, sandbox_id: str, command: tuple[str, ...]) -> None:
    """Open an interactive terminal in a sandbox (default /bin/bash)."""
    handle = attach(ctx, sandbox_id)
    argv = _argv(command)
    session = handle.shell(argv or None)
    forward_stdin(session.stdin)
    try:
        with raw_terminal(session.resize):
            for chunk in session.output:
                write_out(chunk)
            code = session.wait()
    except KeyboardInterrupt:  # only without a terminal: in raw mode Ctrl-C is a keystroke
        session.cancel()
        exit_with(INTERRUPTED)
    exit_with(code)


COMMANDS: tuple[click.Command, ...] = (exec_command, sh_command)
