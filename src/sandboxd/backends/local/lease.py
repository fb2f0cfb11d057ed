"""The network resources of one sandbox: its subnet, its veth's and chain's names, its hooks.

Kept apart from ``network.py`` (which makes and removes them) because records, the
connection trail and the rule watch read leases without making anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .hook_chains import DIRECT, HookGroup, filter_group, input_chain, nat_group

__all__ = ["Lease"]


@dataclass(frozen=True)
class Lease:
    """The network resources of one sandbox (persisted in its state directory)."""

    tag: str
    index: int
    host_ip: str
    sandbox_ip: str
    # The NFLOG group its rules log connection attempts to (0: none; see connection_trail).
    log_group: int = 0
    # Where its hooks are (``hook_chains.py``); a record of an earlier version names none.
    hooks: str = DIRECT

    @property
    def netns(self) -> str:
        """The name sandboxd gave the namespace in ``/run/netns`` before 2026-12-04.

        Networks are no longer named; teardown still removes a named one that a runner of
        an earlier version made (a sandbox it left running across the upgrade).
        """
        return f"sandboxd-{self.tag}"

    @property
    def host_if(self) -> str:
        """Host end of the veth pair (IFNAMSIZ is 16 with the NUL)."""
        return f"sbx{self.tag}"

    @property
    def chain(self) -> str:
        """Per-sandbox filter chain."""
        return f"SBX-{self.tag}"

    @property
    def input_hooks(self) -> str:
        """The chain its ``INPUT`` hooks are in."""
        return "INPUT" if self.hooks == DIRECT else input_chain(self.tag)

    def hook_groups(self) -> tuple[HookGroup, ...]:
        """The bucket chains its hooks are in (none for hooks written directly)."""
        if self.hooks == DIRECT:
            return ()
        return (filter_group(self.tag), nat_group(self.sandbox_ip))

    def log_rule(self, hook: str) -> str:
        """The rule spec that logs new connections into ``log_group`` ("" when none).

        Only a connection's first packet (conntrack ``NEW``) is logged, at most 20 a second
        after a burst of 40 per sandbox and hook: a sandbox that floods cannot flood the
        runner. The prefix names the lease and the hook (``fwd`` for the sandbox's chain,
        ``host`` for its ``INPUT`` hook); the sandbox cannot forge it.
        """
        if not self.log_group:
            return ""
        return (
            "-m conntrack --ctstate NEW -m limit --limit 20/second --limit-burst 40 "
            f"-j NFLOG --nflog-group {self.log_group} --nflog-prefix sbx:{self.tag}:{hook} "
            "--nflog-size 64"
        )

    def to_json(self) -> str:
        """Serialize for the state directory."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Lease:
        """Inverse of ``to_json``."""
        return cls(**json.loads(raw))
