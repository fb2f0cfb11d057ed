"""Messages between the runner, the zygote and the in-sandbox agent.

Why SOCK_SEQPACKET unix sockets with JSON: each ``sendmsg`` is one message (no framing code),
file descriptors ride along with ``SCM_RIGHTS`` (so exec pipes, PTY masters and file-transfer
pipes are handed over instead of copying bytes through the agent), and a peer that dies shows
up as EOF. Every exec or file operation opens its own connection, so a slow stream never
blocks another one. Standard library only (loaded in the zygote and agent).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

MAX_MESSAGE = 1 << 16
MAX_FDS = 4

Message = dict[str, Any]


def socket_path(dir_fd: int, name: str) -> str:
    """A short path to ``name`` in an open directory, dodging the 108-byte sun_path limit."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def encode(msg: Message) -> bytes:
    """Serialize one message."""
    return json.dumps(msg, separators=(",", ":")).encode()


def send(sock: socket.socket, msg: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message, with file descriptors attached when given."""
    data = encode(msg)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """Receive one message; ``(None, [])`` on EOF. Received fds are close-on-exec."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    for fd in fds:
        os.set_inheritable(fd, False)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def listen(path: str) -> socket.socket:
    """Bind and listen on a SEQPACKET socket at ``path`` (replacing a stale one)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(128)
    return sock


def connect(path: str) -> socket.socket:
    """Connect a blocking SEQPACKET client socket to ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock
