"""WebSockets that carry a sandbox's live logs and an interactive terminal to the browser.

Why WebSockets bridged to the gRPC streams: the browser cannot speak gRPC, and both streams
are long-lived and two-way (a terminal's keystrokes and resizes). Each socket is one gRPC
call made with the session's API key, so a sandbox the caller may not see answers exactly as
the API does (NOT_FOUND), and the call ends when the socket does.

Frames: binary frames are bytes (log or terminal output to the browser; keystrokes from it);
text frames are small JSON control messages (``resize`` from the browser; ``exit``,
``error`` and ``end`` to it). Bytes stay bytes: the browser renders them as text in a
terminal or a text node, never as HTML.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import grpc
from starlette.websockets import WebSocket, WebSocketDisconnect

from sandboxd.console.platform import Platform
from sandboxd.console.sessions import Session
from sandboxd_protocol.v1beta2 import streaming_pb2

MAX_STDIN_FRAME_BYTES = 64 * 1024
MAX_TTY_SIDE = 1000
# The terminal's shell: bash where the image has it, else sh.
TERMINAL_COMMAND = ["/bin/sh", "-c", "if command -v bash >/dev/null; then exec bash; fi; exec sh"]
CLOSE_UNAUTHENTICATED = 4401


def _tty_side(value: str | None, default: int) -> int:
    if value is None or not value.isdigit():
        return default
    return max(1, min(MAX_TTY_SIDE, int(value)))


async def _send_control(ws: WebSocket, **message: Any) -> None:
    with contextlib.suppress(Exception):  # the browser may already be gone
        await ws.send_text(json.dumps(message))


def _rpc_message(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {"type": "error", "code": error.code().name, "message": error.details() or ""}


async def logs_socket(ws: WebSocket, platform: Platform, session: Session | None) -> None:
    """Follow a sandbox's logs: its recent tail, then each new chunk as it is written."""
    if session is None:
        await ws.close(code=CLOSE_UNAUTHENTICATED)
        return
    await ws.accept()
    try:
        call = await platform.logs(session.api_key, ws.path_params["sandbox_id"])
    except grpc.aio.AioRpcError as error:
        await _send_control(ws, **_rpc_message(error))
        await ws.close()
        return

    async def forward() -> None:
        try:
            async for reply in call:
                kind = reply.WhichOneof("response")
                if kind == "data":
                    await ws.send_bytes(reply.data.data)
                elif kind == "error":
                    await _send_control(
                        ws, type="error", code=reply.error.code, message=reply.error.message
                    )
                    return
                elif kind == "complete":
                    break
            await _send_control(ws, type="end")
        except grpc.aio.AioRpcError as error:
            await _send_control(ws, **_rpc_message(error))

    await _bridge(ws, call, forward(), _drain_browser(ws))


async def _drain_browser(ws: WebSocket) -> None:
    """Read (and ignore) what the browser sends until it goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


async def terminal_socket(ws: WebSocket, platform: Platform, session: Session | None) -> None:
    """An interactive shell in the sandbox (StreamExec with a TTY), resizable."""
    if session is None:
        await ws.close(code=CLOSE_UNAUTHENTICATED)
        return
    cols = _tty_side(ws.query_params.get("cols"), 80)
    rows = _tty_side(ws.query_params.get("rows"), 24)
    await ws.accept()
    call = platform.exec_stream(session.api_key)
    init = streaming_pb2.ExecStreamInit(
        sandbox_id=ws.path_params["sandbox_id"],
        command=TERMINAL_COMMAND,
        tty=True,
        tty_width=cols,
        tty_height=rows,
        env={"TERM": "xterm-256color"},
    )

    try:
        await call.write(streaming_pb2.ExecStreamRequest(init=init))  # before any keystroke
    except grpc.aio.AioRpcError as error:
        await _send_control(ws, **_rpc_message(error))
        await ws.close()
        return

    async def forward() -> None:
        try:
            async for reply in call:
                kind = reply.WhichOneof("response")
                if kind == "output":
                    await ws.send_bytes(reply.output.data)
                elif kind == "exit":
                    await _send_control(ws, type="exit", code=reply.exit.exit_code)
                    return
                elif kind == "error":
                    await _send_control(
                        ws, type="error", code=reply.error.code, message=reply.error.message
                    )
                    return
        except grpc.aio.AioRpcError as error:
            await _send_control(ws, **_rpc_message(error))

    async def keystrokes() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is not None:
                    for start in range(0, len(data), MAX_STDIN_FRAME_BYTES):
                        chunk = data[start : start + MAX_STDIN_FRAME_BYTES]
                        await call.write(
                            streaming_pb2.ExecStreamRequest(
                                stdin=streaming_pb2.ExecStreamData(data=chunk)
                            )
                        )
                elif message.get("text"):
                    resize = _resize(message["text"])
                    if resize is not None:
                        await call.write(streaming_pb2.ExecStreamRequest(resize=resize))
        with contextlib.suppress(Exception):
            await call.write(streaming_pb2.ExecStreamRequest(close=streaming_pb2.ExecStreamClose()))
            await call.done_writing()

    await _bridge(ws, call, forward(), keystrokes())


def _resize(text: str) -> streaming_pb2.ExecStreamResize | None:
    """A resize from ``{"type": "resize", "cols": C, "rows": R}``; anything else is ignored."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "resize":
        return None
    cols, rows = message.get("cols"), message.get("rows")
    if not isinstance(cols, int) or not isinstance(rows, int):
        return None
    return streaming_pb2.ExecStreamResize(
        width=max(1, min(MAX_TTY_SIDE, cols)), height=max(1, min(MAX_TTY_SIDE, rows))
    )


async def _bridge(ws: WebSocket, call: Any, outward: Any, inward: Any) -> None:
    """Run both directions; when either ends, end the other, the gRPC call and the socket."""
    tasks = [asyncio.ensure_future(outward), asyncio.ensure_future(inward)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        call.cancel()
        with contextlib.suppress(Exception):
            await ws.close()
