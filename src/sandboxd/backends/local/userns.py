"""User namespaces: the sandbox's root is an unprivileged, unique uid range on the host.

Why: everything else in the boundary (no host descriptors, paths resolved in root, no
capabilities, seccomp) stops the escapes we know of; a user namespace decides what the
*next* mistake is worth. Inside, processes run as uid 0; on the host they are
``base + uid`` for a range of 65,536 ids that belongs to this sandbox alone, so a process
that somehow reached a host file, a host process or another sandbox would meet it as an
unrelated, unprivileged user ("nobody"). Host binaries are owned by real root and cannot be
rewritten (CVE-2019-5736), host signals and ptrace are refused, and two sandboxes cannot
touch each other's processes even if they could see them.

Ranges are claimed host-wide with one file per slot under ``/run/sandboxd/idmap`` (like the
network pool's claims), so several runners on one host never share a range; ``/run`` is a
tmpfs, so claims do not outlive a reboot, and neither do the sandboxes.

``IdRangePool`` runs in the runner; ``create_userns`` runs in the keeper (standard library
only).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from ..errors import RunnerExhausted
from . import syscalls
from .claim_files import ClaimWriter

IDS_PER_SANDBOX = 65536
DEFAULT_FIRST_ID = 1 << 30  # far above any /etc/subuid allocation or real account
DEFAULT_SLOTS = 16383  # first id + slots x 65,536 stays below 2**31 - 1
IDMAP_DIR = "/run/sandboxd/idmap"


class IdRangeError(RuntimeError):
    """No free id range, or the host cannot create user namespaces."""


class IdRangesExhausted(IdRangeError, RunnerExhausted):
    """Every user id range is claimed (the runner's fault)."""

    def __init__(self, message: str) -> None:
        RunnerExhausted.__init__(self, "user_ids", message)


@dataclass(frozen=True)
class IdRange:
    """Host ids ``first .. first + count - 1`` mapped to sandbox ids ``0 .. count - 1``."""

    slot: int
    first: int
    count: int = IDS_PER_SANDBOX

    def host_id(self, sandbox_id: int = 0) -> int:
        """The host uid/gid that sandbox uid/gid ``sandbox_id`` is."""
        return self.first + sandbox_id


class IdRangePool:
    """Hands out per-sandbox id ranges; claims are exclusive files, one per slot."""

    def __init__(
        self,
        owner: str,
        *,
        first_id: int = DEFAULT_FIRST_ID,
        slots: int = DEFAULT_SLOTS,
        claim_dir: str = IDMAP_DIR,
    ) -> None:
        if first_id < 65536 or first_id + slots * IDS_PER_SANDBOX > (1 << 31) - 1:
            raise ValueError("id ranges must lie between 65536 and 2**31 - 1")
        self.owner = owner
        self.first_id = first_id
        self.slots = slots
        self.claim_dir = claim_dir
        self._next = 0

    def _range(self, slot: int) -> IdRange:
        return IdRange(slot, self.first_id + slot * IDS_PER_SANDBOX)

    def allocate(self, sandbox_id: str) -> IdRange:
        """Claim a free range (an exclusive create of its claim file)."""
        os.makedirs(self.claim_dir, mode=0o700, exist_ok=True)
        # Whole or not at all: a claim left empty by a kill names no owner to reap it.
        with ClaimWriter(self.claim_dir, f"{self.owner} {sandbox_id}\n") as writer:
            for step in range(self.slots):
                slot = (self._next + step) % self.slots
                if writer.place(os.path.join(self.claim_dir, str(slot))):
                    self._next = slot + 1
                    return self._range(slot)
        raise IdRangesExhausted(f"all {self.slots} user id ranges are in use")

    def adopt(self, marker: str) -> list[IdRange]:
        """Ranges this owner claimed under ``marker`` (e.g. prepared ahead before a restart)."""
        return [ids for ids, label in self.claims() if label == marker]

    def claimed(self) -> list[IdRange]:
        """Every range this owner claims, whoever it went to (an abandoned owner's, reaped)."""
        return [ids for ids, _label in self.claims()]

    def claims(self) -> list[tuple[IdRange, str]]:
        """Every range this owner claims, with its label (a sandbox, or a marker)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.claim_dir):
                path = os.path.join(self.claim_dir, name)
                with contextlib.suppress(OSError, ValueError), open(path) as fh:
                    owner, _, label = fh.read().strip().partition(" ")
                    if owner == self.owner:
                        found.append((self._range(int(name)), label))
        return found

    def relabel(self, ids: IdRange, sandbox_id: str) -> None:
        """Record which sandbox a claimed range went to (for the operator reading claims)."""
        path = os.path.join(self.claim_dir, str(ids.slot))
        data = f"{self.owner} {sandbox_id}\n".encode()
        # Overwritten in place and cut to length, not truncated to nothing first: ext4
        # flushes a file truncated to zero when it is closed (its auto_da_alloc), which cost
        # a warm claim most of a millisecond here.
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)

    def claim(self, ids: IdRange) -> None:
        """Re-assert a recovered sandbox's claim (after a runner restart)."""
        os.makedirs(self.claim_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.claim_dir, str(ids.slot)), "a"):
            pass

    def release(self, ids: IdRange) -> None:
        """Give a range back once nothing of its sandbox runs any more."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.claim_dir, str(ids.slot)))


def create_userns(first: int, count: int, helper: int | None = None) -> int:
    """A new user namespace mapping ``0..count-1`` to ``first..``; an fd that keeps it.

    A helper child unshares the namespace and waits while we (real root) write its maps
    (``syscalls.namespace_by_helper``; ``helper``: the native program to start as that
    child, else the caller forks).
    """

    def write_maps(pid: int) -> None:
        mapping = f"0 {first} {count}\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as fh:
                fh.write(mapping)

    try:
        return syscalls.namespace_by_helper(syscalls.CLONE_NEWUSER, "user", write_maps, helper)
    except OSError as exc:
        if exc.errno is None:  # the helper's unshare failed
            raise IdRangeError("could not create a user namespace (unshare failed)") from None
        raise


def enter_userns(userns_fd: int) -> None:
    """Join the sandbox's user namespace as its root (``0:0``, no supplementary groups).

    Called last in the agent's setup: every mount, device node and namespace was made by
    real root before; from here on the process is the unprivileged host uid
    ``first``. Capabilities it holds inside the namespace are dropped right after.
    """
    syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER)
    os.close(userns_fd)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
