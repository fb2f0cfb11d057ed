"""Host-side networking for sandboxes with egress ``internet`` or ``allowlist``.

Egress ``none`` needs nothing here: the agent unshares a fresh network namespace and brings
up its loopback, so host loopback services are simply not in that namespace.

For the other two, the runner creates a network namespace held by a descriptor (no name, no
mount, no program run: ``network_namespace.py``), a veth pair with a /30 from a private
pool (one end in the namespace as ``eth0``, default route via the host end), IPv6 off on
both ends, and one ``iptables-restore --noflush`` transaction on the host, whose hooks sit
in small chains that ``INPUT``, ``FORWARD`` and ``POSTROUTING`` jump to by bucket
(``hook_chains.py`` says why and how):

* ``-i <veth> -j DROP`` on the ``INPUT`` path: the sandbox cannot reach services on the host
  itself, on any of its addresses, including ones the host gains after it was created;
* ``-i <veth> -j SBX-<tag>`` on the ``FORWARD`` path: a per-sandbox chain that drops the
  sandbox pool (other sandboxes), jumps to the shared chain of non-public destinations and
  then accepts (``internet``) or accepts only the allowlisted CIDRs (``allowlist``); what is
  reachable and why is ``egress.py``'s business;
* ``-o <veth>`` on the ``FORWARD`` path for replies, and ``-j MASQUERADE`` for NAT.

Filtering on the host rather than inside the namespace keeps every rule out of the
sandbox's reach and lets teardown be one transaction. IPv4 forwarding must be on
(``net.ipv4.ip_forward=1``); the backend turns it on, as Docker does. The shared chain is
removed with the last sandbox of this backend when no other backend on the host uses it.

Creates rarely run any of this: ``network_pool.py`` keeps networks made ahead (with the
rules of the last policy asked for) and only checks their rules at create time.

A backend writes its rules one transaction at a time, and what queued meanwhile goes together
in one (``rule_writer.py``): with a thousand sandboxes on a host, or a burst of creates,
parallel ``iptables-restore`` processes each fetching and searching the whole ruleset only
queue on the kernel's lock, time out and retry. The commands themselves run through
``host_commands.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Collection, Sequence

from ..base import EgressType
from . import egress as policy
from .claim_files import ClaimWriter
from .hook_chains import (
    CHAINED,
    DIRECT,
    UNKNOWN,
    HookGroup,
    forward_chain,
    input_chain,
    nat_chain,
)
from .host_commands import NetworkError, NetworkPoolExhausted, run
from .lease import Lease
from .network_namespace import VethPlan, new_network_namespace, remove_link
from .rule_watch import RuleWatch
from .rule_writer import RESTORE, RuleWriter, merge
from .rules_put_back import RulesPutBack
from .shared_rules_lock import SharedRulesLock

__all__ = ["Lease", "NetworkError", "NetworkManager"]

_log = logging.getLogger(__name__)

IPAM_DIR = "/run/sandboxd/ipam"
LEGACY_NETNS_DIR = "/run/netns"
"""Where ``ip netns add`` names namespaces; sandboxd's own are no longer there (``Lease.netns``)."""
HOST_ADDRESSES_SECONDS = 1.0
"""How long a read of the host's own addresses serves the rules of later creates."""
ADD_TRIES = 4
"""How often a network's rules are tried, each retry after repairing its hook groups.

Another backend on the host removes a group it found empty (its last network in it went)
whenever that happens, but not while we hold the host-wide lock from our repair through
our next try (``shared_rules_lock.py``), so a retry fails only when the ruleset is flushed
again meanwhile (a firewall reload) or the lock was passed over."""
PREPARED_HOLDER = "prepared:"
"""How a claim names a network made ahead of need: ``prepared:<tag>`` (``network_pool.py``)."""
LIFT_SECONDS = 30.0
"""How long after a hook group's jumps were put first again a network made ahead only
checks them. Why not at every one: the deletion makes the commit wait for the kernel's
readers, and with it the refill; a client creating sandboxes one after another then took
networks faster than the pool made them (40-125 ms per network), and every third create made
its own, 100-160 ms, on its path (see ``_lift_due``)."""


def _claim_line(words: str, size: int) -> bytes:
    """``words`` as a claim's one line, padded with spaces to at least ``size`` bytes.

    Why written over the old claim in place, never truncated: truncating a file to nothing
    and writing it again makes ext4 start its write-back at the close (``auto_da_alloc``;
    ``/run`` is not a tmpfs everywhere), 0.16-0.4 ms on a create's path against 0.01 ms.
    Readers split on whitespace, so the padding is invisible, and one write of less than a
    page at offset 0 leaves the old claim or the new one to a reader, never a mix, even
    when the process is killed.
    """
    line = words.encode()
    return line.ljust(size - 1) + b"\n"


def _on_this_host(address: str) -> bool:
    """Whether an interface of this host has ``address`` already (one ``bind``, no command).

    Why: a veth left with a subnet's host address (by a crash, by hand) would share it with
    the next sandbox given that subnet, whose replies would then go to the leftover: that
    sandbox would reach nothing, and nothing would say why.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False  # EADDRNOTAVAIL: no interface here has it
    return True


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class NetworkManager(RulesPutBack):
    """Allocates /30s from ``pool`` and sets up / tears down sandbox networks."""

    def __init__(
        self,
        key: str,
        pool: str = "10.213.0.0/16",
        ipam_dir: str = IPAM_DIR,
        *,
        watch: bool = False,
    ) -> None:
        """``watch``: put rules back that something else took away (``rule_watch.py``)."""
        self.key = key
        net = ipaddress.ip_network(pool)
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError("network pool must be IPv4 (sandboxes have no IPv6)")
        if net.prefixlen > 29:
            raise ValueError("network pool must be /29 or larger")
        self.pool = net
        # The namespaces of networks made here whose sandbox has not joined them yet (those
        # made ahead, and those of creates in flight): lease tag -> descriptor. Once the
        # sandbox's processes are in it, the runner lets go (``let_go``); nothing else keeps
        # a namespace, so one whose sandbox is gone, or whose runner died, is gone too.
        self._netns: dict[str, int] = {}
        # The leases whose rules reference the shared chain, by tag.
        self._active: dict[str, Lease] = {}
        # Tags whose rules are being written, put back or removed right now (how many such
        # works each): the watch leaves them to that work. One whose teardown could not
        # remove its rules stays in it until they are gone.
        self.busy: Counter[str] = Counter()
        self._restoring: dict[str, asyncio.Future[None]] = {}  # tag -> its rules' put-back
        self._watch = RuleWatch(self) if watch else None
        # The shared chain as this process last wrote it. Re-declaring a chain that has rules
        # costs iptables-nft a full rule-cache fetch (~12 ms), so a create leaves it alone
        # while its content is unchanged and one of our own rules still jumps to it (the
        # kernel refuses to delete a referenced chain, so then it certainly still exists).
        self._shared_written: tuple[str, ...] | None = None
        self.rules = RuleWriter()
        # Set when this process reads connection attempts (connection_trail.py): new leases
        # log to it. The group is fixed per key, so a restarted runner reads its old rules.
        self.log_group = 0
        # Per lease tag: the lines of the shared chain and of its own chain as last written.
        self.written: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._shared_seen: tuple[str, ...] = ()
        # The host's own addresses as last read, and when (``_host_addresses``).
        self._hosts = policy.HostFact(
            HOST_ADDRESSES_SECONDS, lambda: policy.host_addresses(exclude=self.pool)
        )
        self._resolv = policy.HostFact(HOST_ADDRESSES_SECONDS, policy.resolv_conf)
        self._cursor = 1  # where ``allocate`` looks first: after the subnet it gave last
        # The keys of the hook chain groups (``hook_chains.py``) this process made or found
        # made, and the tags of its networks in each: a group is removed with the last of
        # them, unless another backend's sandboxes use it too.
        self._hooks_made: set[str] = set()
        self._members: dict[str, set[str]] = {}
        self._lifted: dict[str, float] = {}  # group key -> when its jumps were put first
        # Torn-down networks whose rules could not be removed (see ``teardown``), by tag.
        self._unremoved: dict[str, Lease] = {}
        # Host-wide claims, one file per /30: several backends (data directories) on one
        # host share the pool without handing out the same subnet twice. /run is a tmpfs,
        # so claims do not outlive a reboot (and neither do the veths).
        pool_name = str(self.pool).replace("/", "_")
        self.ipam = os.path.join(ipam_dir, pool_name)
        self._shared_rules = SharedRulesLock(ipam_dir)  # shared_rules_lock.py says why

    def tag_for(self, sandbox_id: str) -> str:
        """A short, stable name part: unique per (data dir, sandbox)."""
        return hashlib.sha1(f"{self.key}/{sandbox_id}".encode()).hexdigest()[:10]

    def _claim_file(self, index: int) -> str:
        return os.path.join(self.ipam, str(index))

    def claim(self, lease: Lease, holder: str) -> None:
        """Re-assert a recovered lease's claim; one missing is made again, naming ``holder``.

        Why the line: a missing claim was made again empty, which names no backend and no
        sandbox, so no reaper (``claims``, the orphan sweep) could ever take it back once
        its sandbox and backend were gone: the subnet stayed taken on the host for good
        (one was found on the development host). A claim that is there is left as it is.
        """
        self._active[lease.tag] = lease
        self._join_groups(lease)
        self._start_watch()
        if self._watch is not None:
            self._watch.look_soon()  # it reads the recovered network's chain back
        os.makedirs(self.ipam, exist_ok=True)
        with ClaimWriter(self.ipam, f"{self._holder_words(lease, holder)}\n") as writer:
            writer.place(self._claim_file(lease.index))  # False: it is there; left as it is

    def allocate(self, sandbox_id: str) -> Lease:
        """Reserve the next free /30 of the pool (an exclusive create of its claim file).

        The search starts after the subnet this process handed out last and wraps around,
        rather than from the pool's first subnet each time: with a thousand sandboxes that
        scan was a thousand failed creates per allocation (8 % of ``sandboxd up``'s samples
        while creating beside 1,000 sandboxes). A subnet just given back is also not handed
        out again at once, so nothing addressed to the sandbox that had it (a late reply,
        a connection-tracking entry) reaches the next one while a free subnet is elsewhere.
        """
        os.makedirs(self.ipam, exist_ok=True)
        tag = self.tag_for(sandbox_id)
        end = self.pool.num_addresses // 4
        start = self._cursor if 1 <= self._cursor < end else 1
        with ClaimWriter(self.ipam, f"{self.key} {sandbox_id}\n") as writer:
            for index in itertools.chain(range(start, end), range(1, start)):
                if not writer.place(self._claim_file(index)):
                    continue
                lease = self.lease_at(index, tag, CHAINED)
                if _on_this_host(lease.host_ip):
                    self.release(lease)
                    _log.warning(
                        "skipping sandbox subnet %s/30: an interface on this host has %s although "
                        "nobody claims it (left by a crash or by hand; `ip -o addr | grep %s`)",
                        lease.host_ip, lease.host_ip, lease.host_ip,
                    )  # fmt: skip
                    continue
                self._cursor = index + 1
                return lease
        raise NetworkPoolExhausted(f"network pool {self.pool} exhausted")

    def lease_at(self, index: int, tag: str, hooks: str = UNKNOWN) -> Lease:
        """The lease of the ``index``-th /30 of the pool, named ``tag``.

        ``hooks``: where its hooks are; unknown for a lease rebuilt from a claim that a
        process of any version left (teardown then removes both layouts).
        """
        base = self.pool.network_address + index * 4
        return Lease(tag, index, str(base + 1), str(base + 2), self.log_group, hooks)

    def assign(self, lease: Lease, sandbox_id: str) -> None:
        """Record in a lease's claim who holds it now (a prepared lease, taken).

        With the name it was made under, which ``tag_for(sandbox_id)`` does not give: a
        reaper that finds the claim without its backend tears the right network down.
        """
        fd = os.open(self._claim_file(lease.index), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(
                fd, _claim_line(self._holder_words(lease, sandbox_id), os.fstat(fd).st_size), 0
            )
        finally:
            os.close(fd)

    def _holder_words(self, lease: Lease, holder: str) -> str:
        """A claim's line for ``lease`` held by ``holder``: the network's name unless implied."""
        named = "" if holder == PREPARED_HOLDER + lease.tag else f" {lease.tag}"
        return f"{self.key} {holder}{named}"

    def _claim_fields(self) -> dict[int, list[str]]:
        """Claims of this backend in the host-wide pool: index -> the words after its key."""
        found: dict[int, list[str]] = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.ipam):
                with contextlib.suppress(OSError, ValueError):
                    with open(self._claim_file(int(name))) as fh:
                        key, *fields = fh.read().split()
                    if key == self.key and fields:
                        found[int(name)] = fields
        return found

    def claims(self) -> dict[int, str]:
        """Claims of this backend in the host-wide pool: index -> holder (a sandbox id)."""
        return {index: fields[0] for index, fields in self._claim_fields().items()}

    def claimed_leases(self, spare: Collection[str] | None = None) -> list[Lease]:
        """Every lease this backend claims, each under the name its network was made with.

        With ``spare``: but the leases those sandboxes hold and the prepared ones.
        """
        leases = []
        for index, fields in self._claim_fields().items():
            holder = fields[0]
            if spare is not None and (holder in spare or holder.startswith(PREPARED_HOLDER)):
                continue
            if holder.startswith(PREPARED_HOLDER):
                tag = holder.removeprefix(PREPARED_HOLDER)
            else:  # a taken prepared lease names its tag; one made for the sandbox, not
                tag = fields[1] if len(fields) > 1 else self.tag_for(holder)
            leases.append(self.lease_at(index, tag))
        return leases

    def release(self, lease: Lease) -> None:
        """Return a lease's subnet to the pool."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._claim_file(lease.index))

    def _rules(
        self,
        lease: Lease,
        add: bool,
        body: Sequence[str] = (),
        *,
        lifted: Collection[str] = (),
    ) -> str:
        """The transaction that adds (``body``: chain lines) or removes a sandbox's rules.

        ``lifted``: the keys of the groups whose jumps the add also puts first again
        (``hook_chains.py``).
        """
        if lease.hooks == DIRECT:
            return self._direct_rules(lease, add, body)
        op = "-A" if add else "-D"
        comment = f"-m comment --comment sandboxd:{lease.tag}"
        into, forward = input_chain(lease.tag), forward_chain(lease.tag)
        logged = [f"{op} {into} -i {lease.host_if} {comment} {lease.log_rule('host')}"]
        hooks = [
            *(logged if lease.log_group else []),  # first: every attempt is seen
            f"{op} {into} -i {lease.host_if} {comment} -j DROP",
            f"{op} {forward} -i {lease.host_if} {comment} -j {lease.chain}",
            f"{op} {forward} -o {lease.host_if} -m conntrack --ctstate RELATED,ESTABLISHED "
            f"{comment} -j ACCEPT",
        ]
        nat = (
            f"{op} {nat_chain(lease.sandbox_ip)} -s {lease.sandbox_ip}/32 ! -o {lease.host_if} "
            f"{comment} -j MASQUERADE"
        )
        if not add:
            own = [*hooks, f"-F {lease.chain}", f"-X {lease.chain}"]
            return "\n".join(["*filter", *own, "COMMIT", "*nat", nat, "COMMIT", ""])
        filter_jumps, nat_jumps = (
            group.jumps_again if group.key in lifted else group.jumps_checked
            for group in lease.hook_groups()
        )
        filter_part = ["*filter", *body, *filter_jumps, *hooks, "COMMIT"]
        return "\n".join([*filter_part, "*nat", *nat_jumps, nat, "COMMIT", ""])

    def _direct_rules(self, lease: Lease, add: bool, body: Sequence[str] = ()) -> str:
        """``_rules`` of a lease whose hooks are in ``INPUT`` and the rest themselves."""
        ins, app = ("-I", "-A") if add else ("-D", "-D")
        comment = f"-m comment --comment sandboxd:{lease.tag}"
        logged = [f"{ins} INPUT -i {lease.host_if} {comment} {lease.log_rule('host')}"]
        if not lease.log_group:
            logged = []
        hooks = [
            f"{ins} INPUT -i {lease.host_if} {comment} -j DROP",
            *logged,
            f"{ins} FORWARD -i {lease.host_if} {comment} -j {lease.chain}",
            f"{ins} FORWARD -o {lease.host_if} -m conntrack --ctstate RELATED,ESTABLISHED "
            f"{comment} -j ACCEPT",
        ]
        nat = (
            f"{app} POSTROUTING -s {lease.sandbox_ip}/32 ! -o {lease.host_if} {comment} "
            "-j MASQUERADE"
        )
        if not add:
            body = [f"-F {lease.chain}", f"-X {lease.chain}"]
            return "\n".join(["*filter", *hooks, *body, "COMMIT", "*nat", nat, "COMMIT", ""])
        return "\n".join(["*filter", *body, *hooks, "COMMIT", "*nat", nat, "COMMIT", ""])

    async def setup(
        self,
        lease: Lease,
        egress: EgressType,
        cidrs: tuple[str, ...],
        blocked: tuple[str, ...] = (),
    ) -> None:
        """Namespace, veth, addresses, routes and host rules; rolls back on failure.

        ``blocked`` are destinations the runner forbids on top of the fixed non-public
        ranges (its control plane); see ``egress.py``.
        """
        try:
            await self.prepare(lease)
            await self._add_rules(lease, egress, cidrs, blocked)
        except BaseException:
            await self.teardown(lease, egress, cidrs)
            raise

    async def prepare(self, lease: Lease) -> None:
        """Namespace, veth, addresses and routes, without rules (the caller rolls back).

        System calls in a thread of its own (``network_namespace.py``): it makes the
        namespace and the veth there, with its other end in this process's namespace (the
        runner's, which need not be the host's), then comes back to give that end its
        address and bring it up; the loop's thread never waits for the kernel's network
        lock. A host end left by a crash under the same name fails the veth ("File
        exists") before anything else is made. Also when made ahead of need, this runs at the
        normal CPU priority (``new_network_namespace`` says why); it is 1-2 ms of CPU.
        """
        with contextlib.suppress(OSError), open("/proc/sys/net/ipv4/ip_forward") as fh:
            if fh.read().strip() != "1":
                _write("/proc/sys/net/ipv4/ip_forward", "1")
        plan = VethPlan(lease.host_if, lease.sandbox_ip, 30, lease.host_ip)
        self._netns[lease.tag] = await new_network_namespace(plan)

    def netns_fd(self, lease: Lease) -> int | None:
        """The descriptor of ``lease``'s namespace while this process still holds it."""
        return self._netns.get(lease.tag)

    def let_go(self, lease: Lease) -> None:
        """Close this process's hold on ``lease``'s namespace (its sandbox holds it now)."""
        fd = self._netns.pop(lease.tag, None)
        if fd is not None:
            os.close(fd)

    def _policy(
        self, lease: Lease, egress: EgressType, cidrs: tuple[str, ...], blocked: tuple[str, ...]
    ) -> tuple[list[str], list[str]]:
        """The shared chain's lines and ``lease``'s own chain's lines, as of now."""
        hosts = self._host_addresses()
        shared = policy.shared_chain(hosts, policy.nameservers(self.sandbox_resolv_conf()))
        chain = policy.sandbox_chain(lease.chain, self.pool, egress, cidrs, blocked, hosts=hosts)
        if lease.log_group:  # first: every attempt is seen, whatever then decides it
            chain.insert(1, f"-A {lease.chain} {lease.log_rule('fwd')}")
        known = tuple(shared)
        if self._shared_seen != known:
            self._shared_seen = known  # one copy for every lease while it is unchanged
        self.written[lease.tag] = (self._shared_seen, tuple(chain))
        return shared, chain

    def _host_addresses(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The host's own addresses for the shared chain, read at most once a second.

        Why not at every create: the routing trie they are read from grows with every
        sandbox (each veth's host end is a local address), and with 1,000 sandboxes its read
        and parse were a fifth of the runner's CPU during creates (py-spy). The list in the
        chain is the second line only: traffic to any address of the host, including one it
        gained a moment ago, is dropped on its way in (``INPUT -i <veth>``), so a create
        within a second of an address change may list the address one create later.
        """
        return self._hosts()

    async def refresh_rules(
        self,
        lease: Lease,
        written: tuple[str, ...],
        egress: EgressType,
        cidrs: tuple[str, ...],
        blocked: tuple[str, ...],
    ) -> tuple[str, ...]:
        """Bring a prepared lease's rules (its chain was ``written``) up to this policy.

        Nothing is run when both its chain and the shared chain are as they should be now
        (the usual case: the same profile again, on the same host); otherwise one
        transaction rewrites what changed (declaring a chain in ``iptables-restore``
        replaces its rules). The hooks stay. Returns the chain as it now is.
        """
        shared, chain = self._policy(lease, egress, cidrs, blocked)
        stale_shared = tuple(shared) != self._shared_written
        if tuple(chain) == written and not stale_shared:
            return written
        body = [*shared, *chain] if stale_shared else chain
        rules = "\n".join(["*filter", *body, "COMMIT", ""])
        self._busy_begin(lease.tag)
        try:
            await self._after_put_back(lease.tag)
            await run(*RESTORE, stdin=rules.encode())
        finally:
            self._busy_end(lease.tag)
        self._shared_written = tuple(shared)
        return tuple(chain)

    async def _add_rules(
        self,
        lease: Lease,
        egress: EgressType,
        cidrs: tuple[str, ...],
        blocked: tuple[str, ...],
        *,
        nice: bool = False,
        lift: bool = False,
    ) -> tuple[str, ...]:
        """One transaction: the shared chain (only when it needs writing), ours, the hooks.

        The hook chains the lease needs are made first, each group once per process.
        ``lift``: the jumps of its groups not put first for ``LIFT_SECONDS`` are put first
        again (a network made ahead; see ``_rules``); ``nice``: its commands yield the CPU
        to the work of creates (made ahead of need).
        """
        shared, chain = self._policy(lease, egress, cidrs, blocked)
        skip = tuple(shared) == self._shared_written and bool(self._active)
        # Counted from now on, so that a concurrent teardown of our last other sandbox does
        # not remove the shared chain or the hook chains while this is on its way.
        self._active[lease.tag] = lease
        self._busy_begin(lease.tag)
        try:
            return await self._write_rules(lease, shared, chain, skip, nice=nice, lift=lift)
        finally:
            self._busy_end(lease.tag)

    async def _write_rules(
        self,
        lease: Lease,
        shared: list[str],
        chain: list[str],
        skip: bool,
        *,
        nice: bool,
        lift: bool,
    ) -> tuple[str, ...]:
        """``_add_rules``' transaction (``skip``: the shared chain is written already)."""
        self._join_groups(lease)
        self._start_watch()
        await self._make_hook_chains(lease, nice)
        removal = self._rules(lease, False)
        lifted = self._lift_due(lease) if lift else set()
        body = chain if skip else [*shared, *chain]
        rules = self._rules(lease, True, body, lifted=lifted)  # made ahead: off a create's path
        try:
            await self.rules.apply(rules, nice=nice, undo=removal)
        except NetworkError:
            # A chain or a jump went away under us (another backend removed the shared
            # chain, or a hook group it found empty, between our sandboxes; or the ruleset
            # was flushed): made again and tried again under the host-wide lock, so no
            # backend removes them meanwhile and repairs take turns.
            async with self._shared_rules.held():
                await self._repair_and_add(lease, [*shared, *chain], removal, lifted, nice)
        self._shared_written = tuple(shared)
        for key in lifted:
            self._lifted[key] = time.monotonic()
        return tuple(chain)

    async def _repair_and_add(
        self,
        lease: Lease,
        body: list[str],
        removal: str,
        lifted: set[str],
        nice: bool,
    ) -> None:
        """After a failed add: remove what of it committed, repair its groups, add again.

        The failed transaction may have committed its filter part (each table commits on
        its own): that goes first. Up to ``ADD_TRIES - 1`` more tries; with the host-wide
        lock held the first normally does it (a firewall reload meanwhile may need another).
        """
        for tries_left in range(ADD_TRIES - 2, -1, -1):
            await self.rules.remove(removal)
            for group in lease.hook_groups():
                self._hooks_made.add(group.key)
                await self._repair_hook_chains(group, nice)
            rules = self._rules(lease, True, body, lifted=lifted)
            try:
                await self.rules.apply(rules, nice=nice, undo=removal)
                return
            except NetworkError:
                if not tries_left:
                    raise

    def _lift_due(self, lease: Lease) -> set[str]:
        """The keys of ``lease``'s groups whose jumps were not put first in ``LIFT_SECONDS``.

        A host rule inserted above them (a firewall manager's) is thus overtaken within
        that time, by the next network made ahead, rather than by every one.
        """
        clock = time.monotonic()
        return {
            group.key
            for group in lease.hook_groups()
            if clock - self._lifted.get(group.key, -LIFT_SECONDS) >= LIFT_SECONDS
        }

    def bucket_sizes(self) -> dict[str, int]:
        """How many of our networks each hook bucket (first tag digit) holds, if any."""
        return {
            key.removeprefix("filter:"): len(members)
            for key, members in self._members.items()
            if key.startswith("filter:") and members
        }

    def _join_groups(self, lease: Lease) -> None:
        """Count ``lease`` in its hook groups (which then stay while it has rules)."""
        for group in lease.hook_groups():
            self._members.setdefault(group.key, set()).add(lease.tag)

    async def _leave_groups(self, lease: Lease) -> None:
        """Uncount ``lease``; remove each of its groups it was the last of ours in.

        The removal is one transaction per group, which the kernel refuses (and so rolls
        back whole, jumps included) while a chain still has a rule: another backend's
        sandboxes. A create that needs the group meanwhile may find it gone under its add,
        which then makes it again (:meth:`_add_rules`), as for another backend's removal.
        """
        for group in lease.hook_groups():
            members = self._members.get(group.key, set())
            members.discard(lease.tag)
            if not members:
                self._members.pop(group.key, None)
                self._hooks_made.discard(group.key)
                self._lifted.pop(group.key, None)  # set again when it is made again
                async with self._shared_rules.held():
                    await self.rules.apply_quietly(group.transaction(group.remove))

    async def _make_hook_chains(self, lease: Lease, nice: bool) -> None:
        """The bucket chains of ``lease``'s hooks, made unless this process made them.

        One transaction per group, which fails when the group exists already (made by
        another backend on the host, or by this process before a restart): either way
        it exists afterwards, jumps included, as both are made in the same transaction.
        Made here, its jumps were just put first: the next ``LIFT_SECONDS`` of networks
        made ahead only check them (``_lift_due``; found made by another backend, they are
        put first once that time is over).
        """
        for group in lease.hook_groups():
            if group.key not in self._hooks_made:
                self._hooks_made.add(group.key)
                await self.rules.apply_quietly(group.transaction(group.create), nice=nice)
                self._lifted[group.key] = time.monotonic()

    async def _repair_hook_chains(self, group: HookGroup, nice: bool) -> None:
        """Whatever of ``group`` is missing, made: each chain, and each jump that is gone.

        Step by step, each its own transaction, as any part may exist or not: the chains,
        then each jump checked (``-C``) and put in only when missing. A jump is never taken
        out here: between two transactions the sandboxes behind it would go unfiltered.

        Called with the host-wide lock held (``_repair_and_add``), so repairs take turns,
        in this process and across backends: the next finds the jumps the one before put
        in. Without that, every add that failed at once (a burst of creates after a firewall
        reload) checked before any of them put a jump in, and each put in its own: a copy
        too many exposes nothing, but the kernel then refuses the group's removal with its
        last sandbox, so its chains stayed on the host for good.
        """
        for chain in group.chains:
            await self.rules.apply_quietly(group.transaction((f"-N {chain}",)), nice=nice)
        for jump in group.jumps:
            try:
                await self.rules.apply(group.transaction((f"-C {jump}",)), nice=nice)
            except NetworkError:  # missing
                placed = group.transaction((f"{group.place} {jump}",))
                await self.rules.apply_quietly(placed, nice=nice)

    async def install_rules(
        self,
        lease: Lease,
        egress: EgressType,
        cidrs: tuple[str, ...],
        blocked: tuple[str, ...],
        *,
        nice: bool = False,
    ) -> tuple[str, ...]:
        """The host rules of a network made ahead (see :meth:`setup`); the chain written.

        Its hook groups' jumps are put first again, as a sandbox's own hooks used to be,
        unless that was done in the last ``LIFT_SECONDS`` (``_lift_due``).
        """
        return await self._add_rules(lease, egress, cidrs, blocked, nice=nice, lift=True)

    async def teardown(self, lease: Lease, egress: EgressType, cidrs: tuple[str, ...]) -> None:
        """Remove rules, veth and namespace; tolerant of parts that never existed.

        ``egress`` and ``cidrs`` are not needed (the chain is flushed whole); the signature
        matches ``setup`` for the callers.

        Rules whose removal could not even be started (``RuleWriter.remove``) stay counted
        and claimed: the claim is marked as one to reap (``prepared:<tag>``, which the next
        start of this backend tears down, and the orphan sweep if it never comes back), and
        the next teardown here tries again first. Before, the claim went and the rules
        stayed on the host for good, with nothing left that named them.
        """
        self._busy_begin(lease.tag)  # until forgotten, with its rules gone
        await self._after_put_back(lease.tag)
        await self.remove_unremoved()
        removed = await self._remove_rules(lease)
        # The veth goes at once (both ends), as its name and subnet may be leased again;
        # the namespace dies with its last holder. One netlink request; a link that is gone
        # already is no error. Only a network of an earlier version has a named namespace
        # (``Lease.netns``) to remove, with ``ip``.
        self.let_go(lease)
        try:
            await remove_link(lease.host_if)
        except OSError as exc:
            _log.warning("removing %s: %s", lease.host_if, exc)
        if os.path.lexists(os.path.join(LEGACY_NETNS_DIR, lease.netns)):
            await run("ip", "netns", "del", lease.netns, check=False)
        if not removed:
            _log.warning("the rules of network %s could not be removed; tried again later",
                         lease.tag)  # fmt: skip
            self._unremoved[lease.tag] = lease
            self.assign(lease, PREPARED_HOLDER + lease.tag)
            return
        await self._forget(lease)

    async def _remove_rules(self, lease: Lease) -> bool:
        """Remove ``lease``'s rules; False when some may still be there (``RuleWriter.remove``).

        A lease rebuilt from a claim (hooks unknown: a process of any version made it) has
        the hooks of both layouts removed, then its chain: one transaction, which fails for
        the layout that is not there and so goes rule by rule, where "not there" is no
        failure. Removed one layout after the other, the first one's ``-X`` of the chain
        failed while the other layout's jumps still held it, which is a real failure.
        """
        if lease.hooks != UNKNOWN:
            return await self.rules.remove(self._rules(lease, False))
        either = merge([self._rules(lease, False), self._direct_rules(lease, False)]).decode()
        chain_ops = (f"-F {lease.chain}", f"-X {lease.chain}")
        lines = [line for line in either.splitlines() if line not in chain_ops]
        end_of_filter = lines.index("COMMIT")  # the filter table comes first in both
        return await self.rules.remove(
            "\n".join([*lines[:end_of_filter], *chain_ops, *lines[end_of_filter:], ""])
        )

    async def remove_unremoved(self) -> None:
        """Try again to remove the rules of torn-down networks that a failure left.

        Called before each teardown, and once more when the backend closes: what still
        fails then stays claimed (``prepared:<tag>``) for the next start or an orphan sweep.
        """
        for tag, lease in list(self._unremoved.items()):
            if await self._remove_rules(lease):
                self._unremoved.pop(tag, None)
                await self._forget(lease)

    async def _forget(self, lease: Lease) -> None:
        """After ``lease``'s rules went: its groups and claim, and the shared chain if last."""
        await self._leave_groups(lease)
        self.release(lease)
        self._active.pop(lease.tag, None)
        self.busy.pop(lease.tag, None)
        self.written.pop(lease.tag, None)
        if not self._active:
            self._shared_written = None
            await self.remove_shared_chain()

    async def remove_shared_chain(self) -> None:
        """Delete the shared chain unless some sandbox (of any backend) still jumps to it.

        One transaction: while a rule references the chain the kernel refuses ``-X`` and the
        flush before it is rolled back too, so a sandbox of another backend on this host
        keeps its rules whole; a concurrent create re-declares the chain in its own
        transaction, before or after this one.
        """
        rules = f"*filter\n-F {policy.SHARED_CHAIN}\n-X {policy.SHARED_CHAIN}\nCOMMIT\n"
        async with self._shared_rules.held():
            await self.rules.apply_quietly(rules)

    async def installed(self, lease: Lease) -> dict[str, list[str]]:
        """The lines of ``lease``'s chain and of the shared chain, as this process wrote them.

        A lease this process did not write (re-adopted after a restart) is read back from
        the kernel (``iptables -S``), once; then remembered like the others.
        """
        known = self.written.get(lease.tag)
        if known is None:
            own = await run("iptables", "-w", "5", "-S", lease.chain, check=False)
            shared = await run("iptables", "-w", "5", "-S", policy.SHARED_CHAIN, check=False)
            known = (tuple(shared.splitlines()), tuple(own.splitlines()))
            self.written[lease.tag] = known
        return {policy.SHARED_CHAIN: list(known[0]), lease.chain: list(known[1])}

    def sandbox_resolv_conf(self) -> bytes | None:
        """``egress.resolv_conf()``, read at most once a second (``HOST_ADDRESSES_SECONDS``).

        Why: every create with egress needs it twice (its file and the shared chain's DNS
        rules), and in a burst of creates each read took 0.1 ms of the event loop. An edit
        of the host's file reaches the creates that start a second later at most.
        """
        return self._resolv()
