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
HANDOVER_FDS = 64  # descriptors per message of a handover (send_handover); SCM_RIGHTS allows 253
_SO_SNDBUFFORCE = 32  # root may exceed wmem_max; a SEQPACKET message must fit the send buffer
_SMALL = 200_000  # below the default send buffer: no socket option needed

Message = dict[str, Any]


class ProtocolError(ValueError):
    """A message that is too large, not JSON, or not a JSON object: refused, never fatal."""


ZYGOTE_SOCKET = "zygote-2.sock"
"""The zygote's socket in its run directory, named with the version of its spawn request.

Why versioned: a zygote outlives its runner (``supervisor.py``), and it runs the code it
was started with. A runner restarted on a newer sandboxd must not hand its requests to one
an earlier version left running, which would read them the old way (this one's agents mount
on shared mount points, ``SharedFiles.mount_points``; an earlier one's looked for them in
each state directory, and failed). Bump the number whenever a request changes meaning, and
add the old name to ``EARLIER_ZYGOTE_SOCKETS``."""
EARLIER_ZYGOTE_SOCKETS = ("zygote.sock",)
"""Where zygotes of earlier versions listen: asked to exit when a new one is started."""


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        bind_listener(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(sock: socket.socket, path: str) -> None:
    """Bind a SEQPACKET socket made earlier to ``path`` (replacing a stale one) and listen.

    A spare keeper (``spares.py``) makes its agent's socket before it knows the sandbox,
    so the agent inherits it; the keeper binds it here once it is claimed.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock.bind(path)
    sock.listen(128)


def connect(path: str) -> socket.socket:
    """Connect a blocking SEQPACKET client socket to ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def send_handover(sock: socket.socket, msg: Message, fds: list[int]) -> None:
    """Send ``msg`` with any number of descriptors: one message, then more for the rest.

    A handover (to a process forked ahead, see ``spares.py``) carries every descriptor a
    sandbox is made of, mounted files included, which can be more than one message may
    carry. ``msg`` gets ``fd_count``; the descriptors follow in order, ``HANDOVER_FDS`` per
    message. Nothing is closed here: the sender still owns its copies.
    """
    chunks = [fds[i : i + HANDOVER_FDS] for i in range(0, len(fds), HANDOVER_FDS)] or [[]]
    send(sock, {**msg, "fd_count": len(fds)}, chunks[0])
    for chunk in chunks[1:]:
        send(sock, {"more": True}, chunk)


def recv_handover(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """Receive what :func:`send_handover` sent: ``(None, [])`` on EOF before or within it."""
    msg, fds = recv(sock, HANDOVER_FDS)
    if msg is None:
        return None, []
    try:
        wanted = int(msg.get("fd_count", 0))
        while len(fds) < wanted:
            more, got = recv(sock, HANDOVER_FDS)
            fds += got
            if more is None or not got:
                raise ProtocolError(f"a handover ended after {len(fds)} of {wanted} descriptors")
        if len(fds) != wanted:
            raise ProtocolError(f"a handover brought {len(fds)} descriptors, not {wanted}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return msg, fds


def send_named(sock: socket.socket, msg: Message, named: dict[str, int | None]) -> None:
    """A handover of named descriptors (None values left out); ``msg`` gets their names."""
    names = [name for name, fd in named.items() if fd is not None]
    send_handover(sock, {**msg, "fds": names}, [fd for fd in named.values() if fd is not None])


def recv_named(sock: socket.socket) -> tuple[Message | None, dict[str, int]]:
    """Receive what :func:`send_named` sent: the message and its descriptors by name."""
    msg, fds = recv_handover(sock)
    if msg is None:
        return None, {}
    names = msg.get("fds")
    if (
        not isinstance(names, list)
        or len(names) != len(fds)
        or len(set(map(str, names))) != len(fds)
    ):
        for fd in fds:
            os.close(fd)
        raise ProtocolError("a handover's descriptor names do not match its descriptors")
    return msg, dict(zip(map(str, names), fds, strict=True))
