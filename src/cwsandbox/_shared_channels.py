"""gRPC ``aio`` channels shared by every sandbox handle of a process.

Why: opening a channel costs a TCP connect and an HTTP/2 handshake (about 2 ms on loopback,
more with TLS), and each ``Sandbox`` handle used to open two of its own, so every create paid
for two handshakes before its Start and its first exec. Now handles to one control plane
share one pair (unary and streaming, kept apart as before so a long exec never queues
behind unary traffic), opened on first use and kept open while the process lives.

What keeps sharing safe:

* **Forks.** Channels belong to the process that opened them: a forked child (whose pid
  differs) never uses, or closes, its parent's (gRPC objects must not cross a fork). Nor
  can it open its own: gRPC does not run again after such a fork, so ``_fork_guard``
  refuses with an error that says so instead of a hang.
* **Event loops.** ``aio`` channels are bound to the loop that made them; each loop has its
  own pool, and a pool whose loop has closed is dropped, its channels unused.
* **Credentials.** The key is the endpoint plus the TLS trust in force when a handle is
  made (``CWSANDBOX_CA_FILE`` and the bytes of that file, ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``),
  so a changed CA gets a channel of its own. The API key is call metadata, not part of the
  channel: each handle reads it when it is made, as before.
* **Broken connections.** A channel found in ``TRANSIENT_FAILURE`` (its server went away)
  is replaced by a fresh one on the next call, which connects at once instead of failing
  fast until gRPC's reconnect backoff ends; calls still on the old one get a grace period.
* **Bounded.** At most ``MAX_IDLE_ENDPOINTS`` endpoints that no handle uses are kept; the
  least recently used beyond that are closed.
* **Bounded buffering.** The streaming channel's HTTP/2 window is fixed at
  :data:`STREAM_WINDOW_BYTES` per stream instead of grown by gRPC's bandwidth-delay probes.
  Why: a reader slower than the server (a busy host) slows its pings' answers, the probes
  read that as a long, fat link, and the window grew until gRPC held 120–220 MiB of a
  1 GiB ``read_file_streaming`` unread (measured with three busy cores beside it; the reader
  itself holds at most 8 MiB). The price is speed over long links: through a proxy that
  delays each direction, one stream read 347 MB/s at a 10 ms round trip (probes: 561) and
  113 MB/s at 50 ms (probes: 243); at 1 ms both ran at the loopback's speed.
  ``$CWSANDBOX_STREAM_WINDOW_BYTES`` sets another window, or ``0`` for the probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import weakref
from dataclasses import dataclass, field

import grpc
import grpc.aio

from cwsandbox._channel import CHANNEL_OPTIONS
from cwsandbox._config import CA_FILE_ENV, Endpoint, tls_credentials
from cwsandbox._fork_guard import refuse_after_fork

__all__ = [
    "MAX_IDLE_ENDPOINTS",
    "STREAM_WINDOW_BYTES",
    "STREAM_WINDOW_ENV",
    "SharedChannels",
    "acquire",
    "pool_size",
    "stream_window_options",
]

#: Endpoints kept open with no handle using them.
MAX_IDLE_ENDPOINTS = 8
#: The per-stream HTTP/2 receive window of the streaming channel (not grown by probes).
STREAM_WINDOW_BYTES = 8 * 1024 * 1024
#: Another window in bytes, or 0 for gRPC's bandwidth probes (read when a channel opens).
STREAM_WINDOW_ENV = "CWSANDBOX_STREAM_WINDOW_BYTES"
#: HTTP/2's smallest window; a smaller one would stall every stream.
_MIN_WINDOW_BYTES = 65535
#: Calls still running on a replaced channel get this long before it is closed.
REPLACED_GRACE_SECONDS = 30.0
_ROOTS_ENV = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"

Key = tuple[str, bool, str]
_BROKEN = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


def stream_window_options() -> tuple[tuple[str, int], ...]:
    """The streaming channel's flow-control arguments (see the module's *Bounded buffering*).

    ``$CWSANDBOX_STREAM_WINDOW_BYTES`` replaces :data:`STREAM_WINDOW_BYTES`; ``0`` gives
    gRPC's probes back (faster over long links, unbounded on a busy host). A bad value
    raises ``ValueError`` naming the variable.
    """
    raw = os.environ.get(STREAM_WINDOW_ENV, "").strip()
    window = STREAM_WINDOW_BYTES
    if raw:
        if (
            not (raw.isascii() and raw.isdigit())
            or (0 < int(raw) < _MIN_WINDOW_BYTES)
            or int(raw) >= 1 << 31
        ):
            raise ValueError(
                f"{STREAM_WINDOW_ENV}={raw!r}: expected a number of bytes from "
                f"{_MIN_WINDOW_BYTES} to {(1 << 31) - 1}, or 0 for gRPC's bandwidth probes"
            )
        window = int(raw)
    if window == 0:
        return ()
    return (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window))


def trust_key(endpoint: Endpoint) -> str:
    """What the TLS trust of a channel to ``endpoint`` depends on (empty for plaintext)."""
    if not endpoint.secure:
        return ""
    path = os.environ.get(CA_FILE_ENV, "").strip()
    digest = ""
    if path:
        try:
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            digest = "unreadable"  # tls_credentials() raises the error that names it
    return f"{path}\0{digest}\0{os.environ.get(_ROOTS_ENV, '')}"


def _open(endpoint: Endpoint, role: str) -> grpc.aio.Channel:
    """A channel with a connection of its own (``role`` only names it).

    gRPC pools connections between channels whose arguments are equal, process-wide: streams
    would share the unary calls' connection, and a channel opened to replace a broken one
    would get the same connection, still waiting out its reconnect backoff.
    """
    refuse_after_fork()
    options = (
        *CHANNEL_OPTIONS,
        ("grpc.use_local_subchannel_pool", 1),
        ("cwsandbox.channel_role", role),
        *(stream_window_options() if role == "stream" else ()),
    )
    if endpoint.secure:
        return grpc.aio.secure_channel(endpoint.target, tls_credentials(), options=options)
    return grpc.aio.insecure_channel(endpoint.target, options=options)


@dataclass
class SharedChannels:
    """The unary and the streaming channel to one endpoint, and how many handles use them."""

    endpoint: Endpoint
    pool: _Pool
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    _unary: grpc.aio.Channel | None = None
    _stream: grpc.aio.Channel | None = None

    def _fresh(self, channel: grpc.aio.Channel | None, role: str) -> grpc.aio.Channel:
        if channel is not None and channel.get_state(try_to_connect=False) not in _BROKEN:
            return channel
        if channel is not None:
            self.pool.retire(channel)
        return _open(self.endpoint, role)

    def unary(self) -> grpc.aio.Channel:
        """The channel for unary calls (opened, or replaced when broken, here)."""
        self._unary = self._fresh(self._unary, "unary")
        return self._unary

    def stream(self) -> grpc.aio.Channel:
        """The channel for streaming calls (opened, or replaced when broken, here)."""
        self._stream = self._fresh(self._stream, "stream")
        return self._stream

    def release(self) -> None:
        """One handle is done with these channels; they stay open for the next one."""
        self.users = max(0, self.users - 1)
        self.last_used = time.monotonic()
        self.pool.trim()

    def close_later(self) -> None:
        """Close both channels (no handle uses them), letting calls end first."""
        for channel in (self._unary, self._stream):
            if channel is not None:
                self.pool.retire(channel, grace=None)
        self._unary = self._stream = None


@dataclass
class _Pool:
    """The shared channels of one event loop in one process."""

    loop: asyncio.AbstractEventLoop
    pid: int
    entries: dict[Key, SharedChannels] = field(default_factory=dict)
    _closing: set[asyncio.Future[None]] = field(default_factory=set)

    def acquire(self, endpoint: Endpoint) -> SharedChannels:
        key = (endpoint.target, endpoint.secure, trust_key(endpoint))
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = SharedChannels(endpoint, self)
        entry.users += 1
        entry.last_used = time.monotonic()
        return entry

    def trim(self) -> None:
        idle = sorted((e.last_used, key) for key, e in self.entries.items() if e.users == 0)
        for _, key in idle[: max(0, len(idle) - MAX_IDLE_ENDPOINTS)]:
            self.entries.pop(key).close_later()

    def retire(
        self, channel: grpc.aio.Channel, grace: float | None = REPLACED_GRACE_SECONDS
    ) -> None:
        """Close ``channel`` in the background (after ``grace`` seconds for its calls)."""
        if self.loop.is_closed():
            return
        task = asyncio.ensure_future(_close(channel, grace), loop=self.loop)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close(channel: grpc.aio.Channel, grace: float | None) -> None:
    with contextlib.suppress(Exception):
        await channel.close(grace)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.pid != os.getpid():  # a fork's copy: never touch the parent's
        pool = _POOLS[loop] = _Pool(loop, os.getpid())
    return pool


def acquire(endpoint: Endpoint) -> SharedChannels:
    """The shared channels to ``endpoint`` for this loop and process; call ``release()``."""
    return _pool().acquire(endpoint)


def pool_size(loop: asyncio.AbstractEventLoop) -> int:
    """How many endpoints ``loop``'s pool holds (for tests and diagnostics)."""
    pool = _POOLS.get(loop)
    return 0 if pool is None or pool.pid != os.getpid() else len(pool.entries)


def _drop_all() -> None:
    """After a fork: forget the parent's pools (their channels are the parent's to close)."""
    _POOLS.clear()


os.register_at_fork(after_in_child=_drop_all)
