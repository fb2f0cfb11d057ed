"""Where a sandbox network's hooks sit: in small chains by bucket, not in ``INPUT`` itself.

Why: to delete a rule (``-D``), ``iptables-restore`` fetches and parses every rule of the
chain the rule is in, and an add at the top of a chain (``-I``) fetches it too. With every
sandbox's hooks in ``INPUT``, ``FORWARD`` and ``POSTROUTING`` themselves, taking one
sandbox's rules away beside 1,000 others cost 30 ms of CPU (53 ms wall) and an add 5 ms;
the host's firewall work grew with the square of its sandboxes. In chains of about a
sixteenth of them, the same removal costs 4.8 ms of CPU and the add 3.7 ms.

The layout (every jump carries the comment ``sandboxd:hooks``):

* filter, per hex digit ``d`` (the first of a lease's tag, so about a sixteenth of the
  sandboxes each): ``SBX-I-d``, reached from ``INPUT -i sbxd+``, holds the sandboxes'
  ``-i <veth> -j DROP`` (and their log rules); ``SBX-F-d``, reached from ``FORWARD -i sbxd+``
  and ``FORWARD -o sbxd+``, holds their jumps to their own chains and their reply rules;
* nat, per /24 of sandbox addresses (at most 64 sandboxes): ``SBX-N-aabbcc``, reached from
  ``POSTROUTING -s a.b.c.0/24``, holds their ``MASQUERADE`` rules (``-i`` cannot be matched
  in ``POSTROUTING``, so the address picks the chain).

A packet of a sandbox meets exactly the rules it met before, in the same order relative to
each other; the wildcard jumps only choose where to look.

Every add of a network checks its group's jumps (:attr:`HookGroup.jumps_checked`): a jump
that a firewall manager flushed away makes the add fail and be repaired instead of writing
hooks that nothing reaches. The sandboxes made before such a flush are exposed until that
next add; their hooks, in our chains, survive it (with the hooks in ``INPUT`` and
``FORWARD`` themselves they were lost for good). An add of a network made ahead also puts
the jumps first again, above rules the host inserted since (:attr:`HookGroup.jumps_again`),
as each sandbox's own hooks used to be, at most once per group every ``LIFT_SECONDS``
(30 s, ``network.py``): a rule a firewall manager puts above them is overtaken within that
time.

A group's chains and jumps are made in one transaction, the first time a process needs
them, with ``-N`` (never declared as ``:NAME`` in a transaction, which would flush an
existing chain: another backend's sandboxes' rules). They are removed in one transaction
with the process's last network in the group, which the kernel refuses, and so rolls back
whole, while any sandbox (of any backend on the host) still has a rule in them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DIRECT = "direct"
"""A lease whose hooks are in ``INPUT``, ``FORWARD`` and ``POSTROUTING`` themselves: made by
a version before 2026-12-04 (its record says nothing about hooks)."""
CHAINED = "chained"
"""A lease whose hooks are in the bucket chains of this module."""
UNKNOWN = "unknown"
"""A lease rebuilt from its claim alone (a process that died left it): either layout."""

HOOKS_COMMENT = "-m comment --comment sandboxd:hooks"


def input_chain(tag: str) -> str:
    """The chain of ``INPUT`` hooks of the lease with this tag."""
    return f"SBX-I-{tag[0]}"


def forward_chain(tag: str) -> str:
    """The chain of ``FORWARD`` hooks (both directions) of the lease with this tag."""
    return f"SBX-F-{tag[0]}"


def nat_chain(sandbox_ip: str) -> str:
    """The chain of ``POSTROUTING`` hooks of the sandbox with this address."""
    a, b, c, _ = ipaddress.IPv4Address(sandbox_ip).packed
    return f"SBX-N-{a:02x}{b:02x}{c:02x}"


@dataclass(frozen=True)
class HookGroup:
    """Chains that are made and removed together, with the jumps that reach them.

    ``place`` is how a jump is put in its built-in chain: ``-I`` (first, as the hooks were)
    in ``filter``, ``-A`` in ``nat`` (after the host's own source NAT, as they were).
    """

    key: str
    table: str
    chains: tuple[str, ...]
    jumps: tuple[str, ...]
    place: str

    @property
    def create(self) -> tuple[str, ...]:
        """The chains and their jumps (fails whole if a chain exists)."""
        return (*(f"-N {c}" for c in self.chains), *(f"{self.place} {j}" for j in self.jumps))

    @property
    def remove(self) -> tuple[str, ...]:
        """The jumps and the chains (refused whole while a chain has a rule)."""
        return (*(f"-D {j}" for j in self.jumps), *(f"-X {c}" for c in self.chains))

    @property
    def jumps_checked(self) -> tuple[str, ...]:
        """Each jump checked (``-C``): part of every add of a network in the group.

        It fails when a jump is missing (the built-in chain was flushed, the chains left),
        which the add then repairs, rather than writing hooks that nothing reaches.
        """
        return tuple(f"-C {j}" for j in self.jumps)

    @property
    def jumps_again(self) -> tuple[str, ...]:
        """Each jump taken out and put back: part of each add of a network made ahead.

        Checks as :attr:`jumps_checked` does, and puts the jumps first again, above rules
        the host inserted since, as each sandbox's own hooks were when they sat in
        ``INPUT`` and ``FORWARD`` themselves. Not on a create's path: a deletion makes the
        kernel's commit wait for readers (15-30 ms here, against 2 ms for a check; 40-125 ms
        for a niced network made ahead while creates ran). So a network made ahead does it
        at most once per group every ``network.LIFT_SECONDS``.
        """
        return tuple(line for j in self.jumps for line in (f"-D {j}", f"{self.place} {j}"))

    def transaction(self, lines: tuple[str, ...]) -> str:
        """``lines`` as one ``iptables-restore`` transaction on this group's table."""
        return "\n".join([f"*{self.table}", *lines, "COMMIT", ""])


def filter_group(tag: str) -> HookGroup:
    """The ``INPUT`` and ``FORWARD`` hook chains of the bucket of ``tag``."""
    into, forward = input_chain(tag), forward_chain(tag)
    prefix = f"sbx{tag[0]}+"
    jumps = (
        f"INPUT -i {prefix} {HOOKS_COMMENT} -j {into}",
        f"FORWARD -i {prefix} {HOOKS_COMMENT} -j {forward}",
        f"FORWARD -o {prefix} {HOOKS_COMMENT} -j {forward}",
    )
    return HookGroup(f"filter:{tag[0]}", "filter", (into, forward), jumps, "-I")


def nat_group(sandbox_ip: str) -> HookGroup:
    """The ``POSTROUTING`` hook chain of the /24 of ``sandbox_ip``."""
    chain = nat_chain(sandbox_ip)
    net = ipaddress.IPv4Network(f"{sandbox_ip}/24", strict=False)
    jump = f"POSTROUTING -s {net} {HOOKS_COMMENT} -j {chain}"
    return HookGroup(f"nat:{chain}", "nat", (chain,), (jump,), "-A")
