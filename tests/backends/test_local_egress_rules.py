"""The egress rule text (no root needed): what each chain says, and longest-prefix semantics.

The kernel-level behaviour is in ``test_local_egress.py``; here the cases that are awkward
to build with real networks (nested allowlist entries, resolvers, AnyIP prefixes).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandboxd.backends.base import EgressType
from sandboxd.backends.local import network
from sandboxd.backends.local.egress import (
    NON_PUBLIC,
    REJECT,
    SHARED_CHAIN,
    host_addresses,
    nameservers,
    sandbox_chain,
    shared_chain,
)

POOL = IPv4Network("10.213.0.0/16")
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 203.0.113.0
        /24 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
"""


def verdicts(lines: list[str], chain: str) -> list[tuple[str, str]]:
    """(destination or '*', verdict) of each rule of ``chain``, in order."""
    out = []
    for line in lines:
        if line.startswith(f"-A {chain} "):
            fields = line.split()
            dest = fields[fields.index("-d") + 1] if "-d" in fields else "*"
            out.append((dest, fields[fields.index("-j") + 1]))
    return out


def test_host_addresses_are_every_local_route_including_anyip(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    assert host_addresses(str(tmp_path / "fib_trie")) == (
        IPv4Network("127.0.0.0/8"),
        IPv4Network("127.0.0.1/32"),
        IPv4Network("192.0.2.2/32"),
        IPv4Network("203.0.113.0/24"),
    )
    assert host_addresses(str(tmp_path / "missing")) == ()
    # The sandbox pool's routes (host ends of sandbox veths) are left out when asked.
    assert host_addresses(str(tmp_path / "fib_trie"), exclude=IPv4Network("192.0.2.0/24")) == (
        IPv4Network("127.0.0.0/8"),
        IPv4Network("127.0.0.1/32"),
        IPv4Network("203.0.113.0/24"),
    )
    # An address that changed is seen on the next call (the cache is keyed by what was read).
    (tmp_path / "fib_trie").write_text(FIB_TRIE.replace("|-- 192.0.2.2", "|-- 192.0.2.7"))
    found = host_addresses(str(tmp_path / "fib_trie"))
    assert IPv4Network("192.0.2.7/32") in found and IPv4Network("192.0.2.2/32") not in found


def test_nameservers() -> None:
    conf = b"# x\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 10.0.0.2\nsearch x\n"
    assert nameservers(conf) == (IPv4Address("10.0.0.2"),)
    assert nameservers(None) == ()


def test_shared_chain_rejects_non_public_and_host_but_lets_a_private_resolver_answer() -> None:
    hosts = (IPv4Network("127.0.0.1/32"), IPv4Network("192.0.2.2/32"))
    resolvers = (IPv4Address("10.0.0.2"), IPv4Address("127.0.0.53"), IPv4Address("9.9.9.9"))
    lines = shared_chain(hosts, resolvers)
    assert lines[0] == f":{SHARED_CHAIN} - [0:0]"
    got = verdicts(lines, SHARED_CHAIN)
    # DNS to the private resolver first (udp and tcp), nothing for loopback or public ones.
    assert got[:2] == [("10.0.0.2/32", "RETURN"), ("10.0.0.2/32", "RETURN")]
    assert all("--dport 53" in line for line in lines[1:3])
    assert [d for d, v in got[2:]] == [c for c, _ in NON_PUBLIC] + ["192.0.2.2/32"]
    assert {v for _, v in got[2:]} == {"REJECT"}
    assert all(REJECT in line for line in lines[3:])


def test_internet_chain_is_three_rules() -> None:
    lines = sandbox_chain("SBX-a", POOL, EgressType.INTERNET, (), ())
    assert verdicts(lines, "SBX-a") == [
        ("10.213.0.0/16", "DROP"),
        ("*", SHARED_CHAIN),
        ("*", "ACCEPT"),
    ]


def test_internet_chain_rejects_a_public_control_plane_after_the_shared_chain() -> None:
    lines = sandbox_chain("SBX-a", POOL, EgressType.INTERNET, ("9.9.9.9/32",), ("127.0.0.1/32",))
    assert verdicts(lines, "SBX-a") == [  # allowlist CIDRs are ignored for internet
        ("10.213.0.0/16", "DROP"),
        ("*", SHARED_CHAIN),
        ("*", "ACCEPT"),
    ]
    lines = sandbox_chain("SBX-a", POOL, EgressType.INTERNET, (), ("198.51.100.7",))
    assert verdicts(lines, "SBX-a")[2:] == [("198.51.100.7/32", "REJECT"), ("*", "ACCEPT")]


def test_allowlist_longest_prefix_wins_ties_go_to_the_allowlist() -> None:
    allowed = ("0.0.0.0/0", "10.1.2.0/24", "169.254.169.254/32", "10.213.5.0/24")
    blocked = ("10.1.2.5/32", "198.51.100.7/32")
    hosts = (IPv4Network("10.1.2.9/32"), IPv4Network("10.213.0.1/32"))
    lines = sandbox_chain("SBX-a", POOL, EgressType.ALLOWLIST, allowed, blocked, hosts=hosts)
    assert verdicts(lines, "SBX-a") == [
        ("10.213.0.0/16", "DROP"),  # the pool first, whatever the allowlist names
        ("169.254.169.254/32", "ACCEPT"),  # named inside a blocked range: reachable
        ("10.1.2.5/32", "REJECT"),  # the control plane inside a named subnet: still blocked
        ("10.1.2.9/32", "REJECT"),  # so is a host address there
        ("10.1.2.0/24", "ACCEPT"),
        ("10.213.5.0/24", "ACCEPT"),  # (dead: the pool rule came first)
        ("*", SHARED_CHAIN),  # the rest of the non-public ranges
        ("198.51.100.7/32", "REJECT"),  # a public control plane inside 0.0.0.0/0
        ("0.0.0.0/0", "ACCEPT"),  # naming everything does not open the private ranges
        ("*", "REJECT"),
    ]


def test_allowlist_naming_a_blocked_address_exactly_reaches_it() -> None:
    lines = sandbox_chain("SBX-a", POOL, EgressType.ALLOWLIST, ("10.1.2.5/32",), ("10.1.2.5/32",))
    assert verdicts(lines, "SBX-a")[1] == ("10.1.2.5/32", "ACCEPT")


def test_ipv6_entries_are_ignored() -> None:
    lines = sandbox_chain("SBX-a", POOL, EgressType.ALLOWLIST, ("2001:db8::/32",), ("::1/128",))
    assert verdicts(lines, "SBX-a") == [
        ("10.213.0.0/16", "DROP"),
        ("*", SHARED_CHAIN),
        ("*", "REJECT"),
    ]


def test_the_host_addresses_are_read_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The routing trie grows with every sandbox; reading it for every create took a fifth
    of the runner's CPU with 1,000 sandboxes. A read serves the creates of the next second
    (the ``INPUT`` drop guards the host meanwhile); then the next create reads again."""
    reads: list[IPv4Network | None] = []
    answers = iter([(IPv4Network("203.0.113.7/32"),), (IPv4Network("203.0.113.8/32"),)])

    def read(exclude: IPv4Network | None = None) -> tuple[IPv4Network, ...]:
        reads.append(exclude)
        return next(answers)

    clock = [100.0]
    monkeypatch.setattr(network.policy, "host_addresses", read)
    monkeypatch.setattr(network.policy, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    net = network.NetworkManager("ttltest", pool="10.214.7.0/24", ipam_dir="/nonexistent")
    first = net._host_addresses()
    clock[0] += network.HOST_ADDRESSES_SECONDS - 0.01
    assert net._host_addresses() == first == (IPv4Network("203.0.113.7/32"),)
    assert reads == [IPv4Network("10.214.7.0/24")]  # once, the pool left out
    clock[0] += 0.01
    assert net._host_addresses() == (IPv4Network("203.0.113.8/32"),)  # an address came
    assert len(reads) == 2


def test_the_resolver_settings_are_read_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every create with egress needs the host's resolv.conf twice (its file and the shared
    chain's DNS rules); in a burst each read took 0.1 ms of the event loop. A read serves
    the next second; an edit of the host's file reaches the creates after it."""
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(b"nameserver 192.0.2.53\n")
    reads: list[str] = []
    real = network.policy.resolv_conf

    def read() -> bytes | None:
        reads.append("read")
        return real(str(conf))

    clock = [100.0]
    monkeypatch.setattr(network.policy, "resolv_conf", read)
    monkeypatch.setattr(network.policy, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    net = network.NetworkManager("rctest", pool="10.214.8.0/24", ipam_dir="/nonexistent")
    assert net.sandbox_resolv_conf() == b"nameserver 192.0.2.53\n"
    conf.write_bytes(b"nameserver 192.0.2.54\n")
    clock[0] += network.HOST_ADDRESSES_SECONDS - 0.01
    assert net.sandbox_resolv_conf() == b"nameserver 192.0.2.53\n"
    assert reads == ["read"]
    clock[0] += 0.01
    assert net.sandbox_resolv_conf() == b"nameserver 192.0.2.54\n"  # the edit, a second on
    conf.write_bytes(b"nameserver 127.0.0.53\n")
    clock[0] += network.HOST_ADDRESSES_SECONDS
    assert net.sandbox_resolv_conf() is None  # only the host's own resolver: none given
    assert len(reads) == 3


def test_a_missing_resolv_conf_gives_no_resolver_settings(tmp_path: Path) -> None:
    """A host without the file (a minimal container) gives sandboxes none, not an error."""
    assert network.policy.resolv_conf(str(tmp_path / "absent")) is None
    (tmp_path / "two").write_bytes(b"nameserver 127.0.0.1\nnameserver 198.51.100.1\n")
    assert network.policy.resolv_conf(str(tmp_path / "two")) is not None
