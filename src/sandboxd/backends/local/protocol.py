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

MAX_MESSAGE = 4 << 20  # an exec request as JSON; the kernel sends at most ~4 MiB as one message
MAX_FDS = 4
MAX_SPAWN_FDS = 12  # a spawn: writable layer, scratch file system, up to 8 volumes (base.py), netns
_SO_SNDBUFFORCE = 32  # root may exceed wmem_max; a SEQPACKET message must fit the send buffer
_SMALL = 200_000  # below the default send buffer: no socket option needed

Message = dict[str, Any]


class ProtocolError(ValueError):
    """A message that is too large, not JSON, or not a JSON object: refused, never fatal."""


def socket_path(dir_fd: int, name: str) -> str:
    """A short path to ``name`` in an open directory, dodging the 108-byte sun_path limit."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def encode(msg: Message) -> bytes:
    """Serialize one message."""
    return json.dumps(msg, separators=(",", ":")).encode()


def send(sock: socket.socket, msg: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message, with file descriptors attached when given."""
    data = encode(msg)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if len(data) > _SMALL:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, len(data) + 4096)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(data) + 4096)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[Message | None, list[int]]:
    """Receive one message; ``(None, [])`` on EOF. Received fds are close-on-exec.

    More than ``max_fds`` descriptors is a refused message (the zygote's spawns carry more).

    The size is peeked first so a buffer of exactly that size is used; a message over
    ``MAX_MESSAGE``, or one that is not a JSON object, is consumed (its descriptors closed)
    and raises ``ProtocolError``: a hostile or buggy peer costs one refused request, never
    the receiver.
    """
    probe = bytearray(1)
    size = sock.recv_into(probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    if size > MAX_MESSAGE:
        _data, fds, _flags, _addr = socket.recv_fds(sock, 1, max_fds, socket.MSG_TRUNC)
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    data, fds, flags, _addr = socket.recv_fds(sock, max(size, 1), max_fds)
    for fd in fds:
        os.set_inheritable(fd, False)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError(f"more than {max_fds} descriptors attached")
        msg = json.loads(data)
        if not isinstance(msg, dict):
            raise ProtocolError("a message must be a JSON object")
    except (ValueError, RecursionError) as exc:
        for fd in fds:
            os.close(fd)
        raise exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)) from None
    return msg, fds


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
