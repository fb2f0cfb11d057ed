"""Outbound connection attempts of the local backend's sandboxes, for their activity trails.

How: each sandbox's egress chain starts with an NFLOG rule for new connections, and its
``INPUT`` hook (the host's own addresses) has one too (``network.Lease.log_rule``). This
module owns the NFLOG group those rules log to, finds the sandbox by the lease tag in the
rule's prefix (which the sandbox cannot forge, unlike a source address), asks
``egress_verdict`` which installed rule decided, and folds repeats of one attempt within
:data:`FOLD_SECONDS` into one entry with a count: a sandbox retrying a blocked address
every 10 ms becomes a handful of entries, not thousands.

Bounded everywhere: the kernel rules log at most 20 new connections a second per sandbox
and hook; at most :data:`MAX_PENDING` distinct entries wait for the runner, the rest are
counted as lost and reported as such.

The group number is derived from the backend's key, so a runner restarted on the same data
directory reads the rules its predecessor wrote. When the group cannot be bound (no
``nfnetlink_log``, another process holds it) the trail is off and new rules log nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable

from ..base import ConnectionAttempt, ConnectionDecision
from .egress_verdict import decide
from .network import Lease, NetworkManager
from .nflog import LoggedPacket, NflogReader, NflogUnavailable

__all__ = ["ConnectionTrail", "group_for"]

log = logging.getLogger(__name__)

FOLD_SECONDS = 0.5
MAX_PENDING = 4096
GROUP_BASE = 0x4000


def group_for(key: str) -> int:
    """The NFLOG group of a backend key: fixed, so restarts find their own rules."""
    return GROUP_BASE + zlib.crc32(key.encode()) % (0xFFFF - GROUP_BASE)


FoldKey = tuple[str, str, str, int, str]


class ConnectionTrail:
    """Reads the group, decides, folds, and hands batches to the runner."""

    def __init__(self, net: NetworkManager, leases: Callable[[], dict[str, tuple[str, Lease]]]):
        """``leases``: the backend's sandboxes with a network, lease tag -> (id, lease)."""
        self._net = net
        self._leases = leases
        self._reader: NflogReader | None = None
        self._tried = False
        # Lease tags seen, listed again on a miss (at most once a second under a flood).
        self._by_tag: dict[str, tuple[str, Lease]] = {}
        self._listed_at = -1e9
        self._pending: dict[FoldKey, ConnectionAttempt] = {}
        self._lost = 0
        self._warned_lost = 0
        self._arrived = asyncio.Event()
        self._packets: asyncio.Queue[LoggedPacket] = asyncio.Queue(maxsize=MAX_PENDING)

    @property
    def lost(self) -> int:
        """Attempts not reported so far: kernel buffer overruns and our own bounds."""
        return self._lost + (self._reader.lost if self._reader is not None else 0)

    def open(self) -> None:
        """Bind the group once; on success new leases log to it."""
        if self._tried:
            return
        self._tried = True
        group = group_for(self._net.key)
        reader = NflogReader(group, self._on_packet)
        try:
            reader.open()
        except NflogUnavailable as error:
            log.warning("connection attempts are not recorded in activity trails: %s", error)
            return
        self._reader = reader
        self._net.log_group = group

    def close(self) -> None:
        """Stop reading (rules already written keep logging to a group nobody reads)."""
        if self._reader is not None:
            self._reader.close()

    def _on_packet(self, packet: LoggedPacket) -> None:
        try:
            self._packets.put_nowait(packet)
        except asyncio.QueueFull:
            self._lost += 1

    async def _decide(self, packet: LoggedPacket) -> None:
        parts = packet.prefix.split(":")
        if len(parts) != 3 or parts[0] != "sbx":
            return
        found = self._by_tag.get(parts[1])
        if found is None and time.monotonic() - self._listed_at > 1.0:
            self._by_tag, self._listed_at = self._leases(), time.monotonic()
            found = self._by_tag.get(parts[1])
        if found is None:
            return  # a network made ahead of need, not a sandbox's yet
        sandbox_id, lease = found
        decision: ConnectionDecision
        if parts[2] == "host":
            decision = "dropped"
            rule = f"{lease.input_hooks} -i {lease.host_if} -j DROP (the host itself)"
        else:
            chains = await self._net.installed(lease)
            verdict = decide(chains, lease.chain, packet.destination, packet.protocol, packet.port)
            decision, rule = verdict.decision, verdict.rule
        key: FoldKey = (sandbox_id, packet.protocol, str(packet.destination), packet.port, decision)
        entry = self._pending.get(key)
        if entry is not None:
            self._pending[key] = dataclasses.replace(entry, count=entry.count + 1)
        elif len(self._pending) >= MAX_PENDING:
            self._lost += 1
        else:
            self._pending[key] = ConnectionAttempt(
                sandbox_id, time.time(), packet.protocol, str(packet.destination),
                packet.port, decision, rule,
            )  # fmt: skip
        self._arrived.set()

    async def _decider(self) -> None:
        while True:
            packet = await self._packets.get()
            try:
                await self._decide(packet)
            except Exception:  # one odd packet must not end the trail
                log.exception("connection trail: could not decide %s", packet)

    async def batches(self) -> AsyncIterator[list[ConnectionAttempt]]:
        """Every :data:`FOLD_SECONDS`, the attempts seen since the last batch (when any)."""
        decider = asyncio.create_task(self._decider(), name="connection-trail")
        try:
            while True:
                await self._arrived.wait()
                await asyncio.sleep(FOLD_SECONDS)
                self._arrived.clear()
                batch, self._pending = list(self._pending.values()), {}
                if self.lost > self._warned_lost:
                    log.warning(
                        "connection trail: %d attempts could not be recorded (a flood)",
                        self.lost - self._warned_lost,
                    )
                    self._warned_lost = self.lost
                if batch:
                    yield batch
        finally:
            decider.cancel()
