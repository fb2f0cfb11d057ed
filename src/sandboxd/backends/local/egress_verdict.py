"""Which installed rule decides a packet: the sandbox's egress chain, read the way iptables does.

Why a reader of our own rule text rather than a second copy of the policy: the activity
trail must name the rule that decided each outbound connection attempt. The kernel logs the
attempt once, at the top of the sandbox's chain (one NFLOG rule per sandbox rather than one
beside every decision); what follows is decided here by walking exactly the lines that were
written to ``iptables-restore`` (or read back with ``iptables -S``), first match wins,
jumping into the shared chain and returning from it as the kernel does. So the verdict and
the rule it names are the installed ones, not what a second implementation thinks they are.

Only the forms that ``egress.py`` writes are understood (``-d``, ``-p``, ``--dport``, ``-j``,
and the ``-m udp`` that ``iptables -S`` adds before a port); a line with any other match is
passed over as not matching, and an NFLOG line (which does not decide) is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ..base import ConnectionDecision

__all__ = ["Verdict", "decide"]

DECISIONS: dict[str, ConnectionDecision] = {
    "ACCEPT": "allowed",
    "DROP": "dropped",
    "REJECT": "rejected",
}
MAX_DEPTH = 4
PROTOCOL_MATCHES = frozenset({"tcp", "udp", "icmp"})


@dataclass(frozen=True)
class Verdict:
    """``decision`` is allowed, dropped or rejected; ``rule`` the deciding line as installed."""

    decision: ConnectionDecision
    rule: str


@dataclass(frozen=True)
class _Rule:
    chain: str
    text: str
    target: str
    destination: IPv4Network | None
    protocol: str | None
    port: int | None
    other: bool


def _parse(line: str) -> _Rule | None:
    words = line.split()
    if len(words) < 4 or words[0] != "-A":
        return None
    destination: IPv4Network | None = None
    protocol: str | None = None
    port: int | None = None
    target = ""
    other = False
    index = 2
    while index < len(words):
        word = words[index]
        value = words[index + 1] if index + 1 < len(words) else ""
        if word == "-d":
            destination = IPv4Network(value, strict=False)
        elif word == "-p":
            protocol = value
        elif word == "--dport":
            port = int(value)
        elif word == "-m" and value in PROTOCOL_MATCHES:
            pass  # ``-p udp -m udp --dport 53``: how ``iptables -S`` prints a port match
        elif word == "-j":
            target = value
            break
        else:
            other = True
        index += 2
    if not target:
        return None
    return _Rule(words[1], " ".join(words[1:]), target, destination, protocol, port, other)


def _parsed(line: str) -> _Rule | None:
    """A line's rule; None for a line of a form we do not write (a port range, IPv6)."""
    try:
        return _parse(line)
    except ValueError:
        return None


def _matches(rule: _Rule, destination: IPv4Address, protocol: str, port: int) -> bool:
    if rule.other:
        return False
    if rule.destination is not None and destination not in rule.destination:
        return False
    if rule.protocol is not None and rule.protocol != protocol:
        return False
    return rule.port is None or rule.port == port


def decide(
    chains: Mapping[str, Sequence[str]],
    entry: str,
    destination: IPv4Address,
    protocol: str,
    port: int,
) -> Verdict:
    """The verdict of ``entry`` (a chain's ``-A`` lines by chain name) for one packet.

    A chain that ends without a verdict returns to its caller; the entry chain ending so
    means the packet went on along ``FORWARD`` (reported as allowed, naming no rule of ours).
    """
    parsed = {
        name: [rule for line in lines if (rule := _parsed(line)) is not None]
        for name, lines in chains.items()
    }

    def walk(chain: str, depth: int) -> Verdict | None:
        for rule in parsed.get(chain, ()):
            if rule.target == "NFLOG" or not _matches(rule, destination, protocol, port):
                continue
            if rule.target == "RETURN":
                return None
            if rule.target in DECISIONS:
                return Verdict(DECISIONS[rule.target], rule.text)
            if rule.target in parsed and depth < MAX_DEPTH:
                found = walk(rule.target, depth + 1)
                if found is not None:
                    return found
        return None

    return walk(entry, 0) or Verdict("allowed", f"{entry}: no rule decided (FORWARD policy)")
