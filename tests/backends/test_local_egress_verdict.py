"""Which installed rule decides a packet (no root needed): ``egress_verdict.decide`` over the
exact lines ``egress.py`` writes, and over lines as ``iptables -S`` prints them back.

The kernel-level truth of these verdicts (the sandbox's connect really succeeds or fails as
the trail says) is in ``tests/e2e/test_connection_trail.py``.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from sandboxd.backends.base import EgressType
from sandboxd.backends.local.egress import SHARED_CHAIN, sandbox_chain, shared_chain
from sandboxd.backends.local.egress_verdict import decide

POOL = IPv4Network("10.213.0.0/16")
HOSTS = (IPv4Network("203.0.113.7/32"),)
CHAIN = "SBX-abc"
LOG = f"-A {CHAIN} -m conntrack --ctstate NEW -j NFLOG --nflog-group 9 --nflog-prefix sbx:abc:fwd"


def chains(egress: EgressType, allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    own = sandbox_chain(CHAIN, POOL, egress, allowed, ("10.9.9.9/32",), hosts=HOSTS)
    own.insert(1, LOG)
    resolvers = (IPv4Address("10.0.0.2"),)
    return {SHARED_CHAIN: shared_chain(HOSTS, resolvers), CHAIN: own}


@pytest.mark.parametrize(
    ("destination", "protocol", "port", "decision", "rule"),
    [
        ("198.18.0.1", "tcp", 443, "allowed", f"{CHAIN} -j ACCEPT"),
        ("10.1.2.3", "tcp", 80, "rejected", f"{SHARED_CHAIN} -d 10.0.0.0/8 -j REJECT"),
        ("10.213.4.2", "tcp", 80, "dropped", f"{CHAIN} -d 10.213.0.0/16 -j DROP"),
        ("169.254.169.254", "tcp", 80, "rejected", f"{SHARED_CHAIN} -d 169.254.0.0/16"),
        ("203.0.113.7", "udp", 9, "rejected", f"{SHARED_CHAIN} -d 203.0.113.7/32 -j REJECT"),
        # The host's resolver on a private address: port 53 returns from the shared chain...
        ("10.0.0.2", "udp", 53, "allowed", f"{CHAIN} -j ACCEPT"),
        # ...any other port of it does not.
        ("10.0.0.2", "tcp", 22, "rejected", f"{SHARED_CHAIN} -d 10.0.0.0/8 -j REJECT"),
    ],
)
def test_internet_verdicts_name_the_deciding_rule(
    destination: str, protocol: str, port: int, decision: str, rule: str
) -> None:
    verdict = decide(chains(EgressType.INTERNET), CHAIN, IPv4Address(destination), protocol, port)
    assert verdict.decision == decision
    assert verdict.rule.startswith(rule), verdict.rule


def test_allowlist_longest_prefix_and_closing_reject() -> None:
    rules = chains(EgressType.ALLOWLIST, ("10.1.2.0/24", "198.18.0.0/15"))
    verdict = decide(rules, CHAIN, IPv4Address("10.1.2.9"), "tcp", 80)
    assert (verdict.decision, verdict.rule) == ("allowed", f"{CHAIN} -d 10.1.2.0/24 -j ACCEPT")
    verdict = decide(rules, CHAIN, IPv4Address("10.1.3.9"), "tcp", 80)
    assert verdict.decision == "rejected" and SHARED_CHAIN in verdict.rule
    verdict = decide(rules, CHAIN, IPv4Address("198.19.0.1"), "tcp", 80)
    assert (verdict.decision, verdict.rule) == ("allowed", f"{CHAIN} -d 198.18.0.0/15 -j ACCEPT")
    verdict = decide(rules, CHAIN, IPv4Address("1.1.1.1"), "tcp", 80)
    assert verdict.decision == "rejected"
    assert verdict.rule == f"{CHAIN} -j REJECT --reject-with icmp-admin-prohibited"


def test_lines_as_iptables_prints_them_back() -> None:
    """After a runner restart the lines come from ``iptables -S`` (``-N``, ``-m udp`` ...)."""
    printed = {
        SHARED_CHAIN: [
            f"-N {SHARED_CHAIN}",
            f"-A {SHARED_CHAIN} -d 10.0.0.2/32 -p udp -m udp --dport 53 -j RETURN",
            f"-A {SHARED_CHAIN} -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited",
        ],
        CHAIN: [
            f"-N {CHAIN}",
            f"-A {CHAIN} -m conntrack --ctstate NEW -m limit --limit 20/sec -j NFLOG "
            '--nflog-prefix "sbx:abc:fwd" --nflog-group 9',
            f"-A {CHAIN} -d 10.213.0.0/16 -j DROP",
            f"-A {CHAIN} -j {SHARED_CHAIN}",
            f"-A {CHAIN} -j ACCEPT",
        ],
    }
    # "-m udp" is the protocol's own match, printed by iptables: not an unknown condition.
    assert decide(printed, CHAIN, IPv4Address("10.0.0.2"), "udp", 53).decision == "allowed"
    assert decide(printed, CHAIN, IPv4Address("10.0.0.3"), "udp", 53).decision == "rejected"
    assert decide(printed, CHAIN, IPv4Address("10.213.0.6"), "tcp", 1).decision == "dropped"


def test_a_chain_without_a_verdict_says_so() -> None:
    verdict = decide({CHAIN: [LOG]}, CHAIN, IPv4Address("198.18.0.1"), "tcp", 80)
    assert verdict.decision == "allowed" and "no rule decided" in verdict.rule


def test_a_jump_loop_ends() -> None:
    """Chains that jump to each other (never written by us) end instead of recursing forever."""
    loop = {"A": ["-A A -j B"], "B": ["-A B -j A"]}
    assert decide(loop, "A", IPv4Address("198.18.0.1"), "tcp", 80).decision == "allowed"
