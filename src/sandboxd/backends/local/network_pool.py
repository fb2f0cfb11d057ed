"""Sandbox networks made ahead of need, so that egress adds next to nothing to a create.

Why: setting up an ``internet`` or ``allowlist`` network is its namespace and veth (a few
system calls in a thread, about 2 ms: ``network_namespace.py``) and an ``iptables-restore``
run for its rules, which waits its turn behind other creates' (``rule_writer.py``): 10-15
ms on an idle host and 60 ms or more on a busy one, all on the create path. None of it
depends on the sandbox, so a few networks are kept ready (:class:`PreparedNetworks`), each
with the host rules of the policy the last create asked for (egress type, allowlist,
blocked destinations). A create takes one and only checks its rules: unchanged (the usual
case) costs no command at all; otherwise one ``iptables-restore`` rewrites the chain. The
pool refills in the background after a create, its rules' commands at the lowest CPU
priority, so on a small host they do not slow the creates and execs they run beside.

A prepared network is a full network with nobody in it: a namespace without processes, with
the same rules it would get at create time. Taken ones are never given back: teardown is the
same as for any sandbox's network. Claims of prepared networks say ``prepared:<tag>`` in the
host-wide IPAM directory until taken, so a runner that died with some ready tears them down
on its next start (:meth:`PreparedNetworks.reap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..base import EgressType
from .host_commands import HostNetworkFailed
from .network import PREPARED_HOLDER, Lease, NetworkError, NetworkManager

_log = logging.getLogger(__name__)

DEFAULT_READY_NETWORKS = 4
"""Networks kept ready once a sandbox with egress was created (0: made at create).

Four, not two: a client creating sandboxes one after another takes one per ~40 ms, about
as fast as the niced refill makes them (20-65 ms each on the 2-core VM), so a pool of two
ran dry now and then and that create made its network on its path (60-120 ms). 40 creates
in a row: 8 of 40 over 55 ms with two, 3-5 with four (the first create always makes its
own). Each ready network is an empty namespace, a veth pair and its rules."""
BUCKET_ROOM = 64
"""A hook bucket with this many of our networks takes no more made ahead (``_holder_name``):
about a sixteenth of 1,000 sandboxes, the size ``hook_chains.py`` was measured at."""
BUCKET_TRIES = 256
"""Names tried for a bucket in use with room (with none, for one not full); one in sixteen
hits a given bucket, so 256 tries all miss it once in 15 million networks, which then only
opens another bucket (or, with all sixteen full, joins a full one)."""
PREPARED = PREPARED_HOLDER

Policy = tuple[EgressType, tuple[str, ...], tuple[str, ...]]


@dataclass
class _Ready:
    lease: Lease
    policy: Policy
    chain: tuple[str, ...]


class PreparedNetworks:
    """Keeps ``ready`` networks made ahead for the most recent egress policy."""

    def __init__(self, net: NetworkManager, ready: int = DEFAULT_READY_NETWORKS) -> None:
        self._net = net
        self._size = max(0, ready)
        self._ready: deque[_Ready] = deque()
        self._policy: Policy | None = None
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    async def take(
        self,
        sandbox_id: str,
        egress: EgressType,
        cidrs: tuple[str, ...],
        blocked: tuple[str, ...],
        claimed: Callable[[Lease], None],
    ) -> Lease:
        """A network for ``sandbox_id``: a ready one brought to this policy, or made now.

        ``claimed`` is called as soon as the lease is the sandbox's (before any command
        runs when it is made now), so a crash in the middle leaves it recorded for cleanup.
        Call :meth:`refill` once the create is done.
        """
        self._policy = (egress, cidrs, blocked)
        while self._ready:
            ready = self._ready.popleft()
            self._net.assign(ready.lease, sandbox_id)
            claimed(ready.lease)
            try:
                await self._net.refresh_rules(ready.lease, ready.chain, egress, cidrs, blocked)
            except NetworkError as exc:  # rules gone under us (a flushed ruleset)
                _log.warning("a prepared network failed its rules (%s); making one now", exc)
                await self._net.teardown(ready.lease, egress, cidrs)
                continue
            return ready.lease
        lease = self._net.allocate(sandbox_id)
        claimed(lease)
        try:
            await self._net.setup(lease, egress, cidrs, blocked)
        except NetworkError as exc:
            why = f"the host could not make the sandbox's network: {exc}"
            raise HostNetworkFailed(why) from exc
        return lease

    def refill(self) -> None:
        """Make networks ahead, up to the pool size, for the last policy (in the background)."""
        if self._closed or self._policy is None or len(self._ready) >= self._size:
            return
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while not self._closed and self._policy is not None and len(self._ready) < self._size:
            policy = self._policy
            egress, cidrs, blocked = policy
            lease = self._net.allocate(self._holder_name())
            self._net.assign(lease, f"{PREPARED}{lease.tag}")
            try:
                await self._net.prepare(lease)
                chain = await self._net.install_rules(lease, egress, cidrs, blocked, nice=True)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._net.teardown(lease, egress, cidrs)
                if isinstance(exc, Exception):
                    _log.warning("could not prepare a sandbox network: %s", exc)
                    return
                raise
            self._ready.append(_Ready(lease, policy, chain))

    def _holder_name(self) -> str:
        """A random name for a network made ahead, whose tag falls in a hook bucket in use.

        Why not any random tag: a tag's first digit picks its hook group
        (``hook_chains.py``), made with the first network in it and removed with the last,
        and with a handful of networks alive most random tags land in an empty bucket. A
        client that makes and removes sandboxes one after another then made and removed a
        group almost every time; each removal is a deletion, whose commit waits for the
        kernel's readers (an RCU grace period, 10-25 ms here) and holds up every firewall
        transaction after it, the adds of creates and of these networks included: 37 of 162
        transactions for 41 creates, the pool ran dry, and one create in ten took 80-120 ms
        making its own network behind them. Buckets stay about equal in size: one counts as
        in use only below ``BUCKET_ROOM`` networks, and a full one takes none made ahead.
        With no bucket in use below that, the name opens another bucket: before, any random
        name was taken then, and one in sixteen landed in the full bucket anyway (a CI run
        saw two in a row). A few hashes, no system call.
        """
        sizes = self._net.bucket_sizes()
        with_room = {digit for digit, size in sizes.items() if size < BUCKET_ROOM}
        full = {digit for digit, size in sizes.items() if size >= BUCKET_ROOM}
        name = f"p-{secrets.token_hex(8)}"
        for _ in range(BUCKET_TRIES):
            digit = self._net.tag_for(name)[0]
            if (digit in with_room) if with_room else (digit not in full):
                break
            name = f"p-{secrets.token_hex(8)}"
        return name

    async def reap(self) -> int:
        """Tear down prepared networks a previous process left (it died); how many."""
        gone = 0
        for index, holder in self._net.claims().items():
            if holder.startswith(PREPARED):
                lease = self._net.lease_at(index, holder.removeprefix(PREPARED))
                with contextlib.suppress(Exception):
                    await self._net.teardown(lease, EgressType.INTERNET, ())
                    gone += 1
        return gone

    async def close(self) -> None:
        """Stop refilling and tear down every ready network."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        while self._ready:
            ready = self._ready.popleft()
            with contextlib.suppress(Exception):
                await self._net.teardown(ready.lease, ready.policy[0], ready.policy[1])
