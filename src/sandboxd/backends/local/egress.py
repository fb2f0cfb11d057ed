"""What a sandbox's egress may reach: the rule text behind ``internet`` and ``allowlist``.

``internet`` means the public internet. A sandbox must not reach what sits *next to* the
runner: private networks (RFC 1918), carrier-grade NAT, link-local (cloud metadata),
loopback, multicast, ``0/8``, the reserved ``240/4`` with the broadcast address, the host's
own addresses, and the control plane. ``NON_PUBLIC`` lists the fixed ranges; the runner
adds the control plane's addresses per sandbox (``NetworkSpec.blocked``).

Rules, all on the host's ``FORWARD`` path (see ``network.py`` for the hooks):

* **One shared chain** (:data:`SHARED_CHAIN`) rejects the fixed ranges and the host's own
  addresses. It is host-wide and its content is the same for every sandbox, so each
  sandbox's transaction re-declares it (``iptables-restore`` flushes a declared chain and
  refills it atomically): the per-sandbox rule count stays at a handful whatever the list,
  and creates refresh the host's addresses (read at most once a second: ``network.py``).
* **Traffic addressed to the host itself never gets here**: the kernel delivers a packet
  for any local address (on any interface, including one added after the sandbox was
  created) to ``INPUT``, where ``INPUT -i <veth> -j DROP`` stops it. The host's addresses in
  the shared chain are a second line (and make the policy visible in ``iptables-save``).
* **The host's resolvers stay reachable on port 53** when they sit on a non-public address
  (a VPC resolver such as ``10.0.0.2``): internet sandboxes get the host's
  ``resolv.conf``, and name resolution is part of "the internet". Nothing else on them is.
* **Allowlist entries that name a blocked range explicitly win**, by longest prefix: a
  destination is decided by the most specific entry that contains it, the allowlist's on a
  tie. Naming ``10.1.2.0/24`` makes that subnet reachable while the rest of ``10/8`` stays
  blocked; naming ``0.0.0.0/0`` does not open the private ranges (they are more specific);
  a control plane at ``10.1.2.5`` inside a named ``10.1.2.0/24`` stays blocked unless named
  itself. The sandbox pool is always dropped first (sandboxes never reach each other), and
  the host stays unreachable through ``INPUT`` whatever an allowlist says.

IPv6 is off inside sandbox namespaces and on the host end of their veths, so no IPv6 rule is
needed; turning it on needs the equivalent ``ip6tables`` list first.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

from ..base import EgressType

SHARED_CHAIN = "SANDBOXD-NONPUBLIC"
REJECT = "REJECT --reject-with icmp-admin-prohibited"
T = TypeVar("T")

NON_PUBLIC: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this' network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, cloud metadata"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and the limited broadcast 255.255.255.255"),
)
NON_PUBLIC_NETS: tuple[IPv4Network, ...] = tuple(IPv4Network(c) for c, _ in NON_PUBLIC)


def _covered(net: IPv4Network) -> bool:
    return any(net.subnet_of(fixed) for fixed in NON_PUBLIC_NETS)


def host_addresses(
    fib_trie: str = "/proc/net/fib_trie", exclude: IPv4Network | None = None
) -> tuple[IPv4Network, ...]:
    """Every IPv4 destination the kernel delivers locally (``LOCAL`` routes), right now.

    Read from the routing trie rather than the interface list so that "AnyIP" local
    prefixes (``ip route add local 203.0.113.0/24 dev lo``) count too. Empty when the file
    cannot be read (not Linux). Routes inside ``exclude`` (the sandbox pool: the host ends
    of sandbox veths, which the sandbox chain drops whole) are left out.

    Why it is built like this: it runs up to once a second while sandboxes are created
    (``NetworkManager._host_addresses``), and a host with many sandboxes has
    a trie of tens of thousands of lines. One regex pass finds the routes; the networks are
    made only when the set changed since the last call (sandboxes coming and going change
    only routes inside ``exclude``).
    """
    try:
        with open(fib_trie) as fh:
            text = fh.read()
    except OSError:
        return ()
    found = set(_LOCAL_ROUTE.findall(text))
    if exclude is not None:
        base, mask = int(exclude.network_address), int(exclude.netmask)
        found = {
            (address, prefix)
            for address, prefix in found
            if int.from_bytes(socket.inet_aton(address), "big") & mask != base
        }
    key = frozenset(found)
    last = _LAST.get(fib_trie)
    if last is not None and last[0] == key:
        return last[1]
    try:
        networks = tuple(sorted({IPv4Network(f"{a}/{p}", strict=False) for a, p in found}))
    except ValueError:
        return ()
    _LAST[fib_trie] = (key, networks)
    return networks


_LOCAL_ROUTE = re.compile(r"\|-- ([0-9.]+)\n(?:[ \t]+/[^\n]*\n)*?[ \t]+/([0-9]+) [^\n]*LOCAL\n")
_LAST: dict[str, tuple[frozenset[tuple[str, str]], tuple[IPv4Network, ...]]] = {}


class HostFact(Generic[T]):
    """What ``read`` returns, read again only once ``seconds`` have passed since.

    For facts of the host that every create with egress needs and that rarely change (its
    addresses, its resolver settings): ``NetworkManager`` says why each may be that old.
    """

    def __init__(self, seconds: float, read: Callable[[], T]) -> None:
        self._seconds = seconds
        self._read = read
        self._last: tuple[float, T] | None = None

    def __call__(self) -> T:
        """The value, read now if the last read is ``seconds`` old (or there was none)."""
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= self._seconds:
            self._last = (now, self._read())
        return self._last[1]


def resolv_conf(path: str = "/etc/resolv.conf") -> bytes | None:
    """The host's resolv.conf for sandboxes with egress; None if it names only loopback servers.

    A loopback server (systemd-resolved's 127.0.0.53, say) is the host's own, which no
    sandbox may reach; such a sandbox gets no resolver settings from the host.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    servers = [ln.split()[1] for ln in data.decode(errors="replace").splitlines()
               if ln.startswith("nameserver") and len(ln.split()) > 1]  # fmt: skip
    usable = [s for s in servers if not s.startswith(("127.", "::1"))]
    return data if usable else None


def nameservers(resolv_conf: bytes | None) -> tuple[IPv4Address, ...]:
    """The IPv4 ``nameserver`` entries of a resolv.conf (others are ignored)."""
    servers: list[IPv4Address] = []
    for line in (resolv_conf or b"").decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(IPv4Address(fields[1]))
            except ValueError:
                continue
    return tuple(dict.fromkeys(servers))


def shared_chain(hosts: Iterable[IPv4Network], resolvers: Iterable[IPv4Address]) -> list[str]:
    """The declaration and rules of :data:`SHARED_CHAIN` (``*filter`` lines)."""
    lines = [f":{SHARED_CHAIN} - [0:0]"]
    for server in resolvers:
        if server.is_loopback or not _covered(IPv4Network(server)):
            continue  # loopback is not reachable from a namespace; public needs no exception
        for proto in ("udp", "tcp"):
            lines.append(f"-A {SHARED_CHAIN} -d {server}/32 -p {proto} --dport 53 -j RETURN")
    lines += [f"-A {SHARED_CHAIN} -d {net} -j {REJECT}" for net in NON_PUBLIC_NETS]
    lines += [f"-A {SHARED_CHAIN} -d {net} -j {REJECT}" for net in hosts if not _covered(net)]
    return lines


def _networks(cidrs: Iterable[str]) -> list[IPv4Network]:
    out: list[IPv4Network] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if isinstance(net, IPv4Network):  # sandboxes have no IPv6
            out.append(net)
    return list(dict.fromkeys(out))


def sandbox_chain(
    chain: str,
    pool: IPv4Network,
    egress: EgressType,
    allowed: Iterable[str],
    blocked: Iterable[str],
    *,
    hosts: Iterable[IPv4Network] = (),
) -> list[str]:
    """The declaration and rules of one sandbox's chain (see the module docstring).

    ``allowed`` are the allowlist's CIDRs (ignored for ``internet``), ``blocked`` what the
    runner forbids on top of the fixed ranges (the control plane), ``hosts`` the host's
    addresses that the shared chain rejects (needed here only where an explicit allowlist
    entry contains one).
    """
    allow = _networks(allowed) if egress is EgressType.ALLOWLIST else []
    runner_blocked = _networks(blocked)
    extra = [net for net in runner_blocked if not _covered(net)]  # the rest: shared chain
    own = [net for net in hosts if not net.subnet_of(pool)]  # the pool is dropped first
    every_block = [*NON_PUBLIC_NETS, *own, *runner_blocked]
    explicit = [a for a in allow if any(a.subnet_of(b) for b in every_block)]
    inner = [
        b
        for b in every_block
        if any(b.prefixlen > a.prefixlen and b.subnet_of(a) for a in explicit)
    ]
    # Longest prefix first; on a tie the allowlist entry comes first and wins.
    ordered = sorted(
        [(a, True) for a in explicit] + [(b, False) for b in dict.fromkeys(inner)],
        key=lambda entry: (-entry[0].prefixlen, not entry[1], entry[0].network_address),
    )
    lines = [f":{chain} - [0:0]", f"-A {chain} -d {pool} -j DROP"]
    lines += [f"-A {chain} -d {net} -j {'ACCEPT' if ok else REJECT}" for net, ok in ordered]
    lines.append(f"-A {chain} -j {SHARED_CHAIN}")
    lines += [f"-A {chain} -d {net} -j {REJECT}" for net in extra]
    if egress is EgressType.ALLOWLIST:
        lines += [f"-A {chain} -d {net} -j ACCEPT" for net in allow if net not in explicit]
        lines.append(f"-A {chain} -j {REJECT}")
    else:
        lines.append(f"-A {chain} -j ACCEPT")
    return lines
