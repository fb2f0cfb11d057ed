"""Warm sandboxes of the local backend: built ahead of time, named only when claimed.

Why a slot name and a rename: a warm sandbox is built before anyone knows its sandbox id,
yet once claimed it must be indistinguishable from one created cold under that id: its
state directory ``sandboxes/<id>/`` and ``record.jsonl`` (what ``recover`` finds after a
runner restart), its hostname, environment, command and lifetime. So a slot is built like
any sandbox (``LocalBackend._build``: user namespace, cgroup, fresh writable layer, network,
keeper and agent) under ``<data_dir>/warm/<slot>/``, with a slot name that can never be a
sandbox id (``_warm-…``; ids start with a letter or digit). Its main process is not
started. A claim then:

1. sets the hostname in the sandbox's UTS namespace: the runner's thread joins the
   namespace and leaves it again (the agent has no capabilities left to do it itself);
2. saves the record (``record.jsonl``) with the sandbox id, then renames the directory into
   ``sandboxes/<id>/`` (atomic; the keeper writes through a directory descriptor and the
   agent's socket is found by path, so both follow the rename);
3. starts the main process with the claimant's command, environment (``HOSTNAME``
   included), working directory and lifetime, which the agent takes with ``start``; the
   request goes out before step 2, and the records move while the agent works on it.

Nothing ran in a slot before its claim but its agent, and each slot has its own writable
layer, which dies with it: a file written in one claimed sandbox is never seen by another.
The cgroup, user-id range and network namespace keep the slot's name on the host (cgroup v2
cannot rename a group); the records name them, so stats, stop, destroy and recover work
as for any sandbox.

A runner that dies leaves its slots running; the next one destroys them
(``discard_prepared``) before it creates anything, including a slot whose claim had sent
its start but not yet moved (that start was never answered: the control plane sends it
again and it is made cold).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from typing import TYPE_CHECKING

from ..base import DEFAULT_PATH, SandboxSpec
from ..errors import BackendError, InvalidSpec, SandboxExists, SandboxStartError
from . import process, syscalls
from .state import SandboxRecord
from .unrecorded import forget_unrecorded

if TYPE_CHECKING:
    from .backend import LocalBackend

WARM_DIR = "warm"
SLOT_PREFIX = "_warm-"
DISCARD_WAIT_SECONDS = 10.0


class WarmSlots:
    """The prepared sandboxes of one ``LocalBackend`` (see the module docstring)."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self.dir = backend.data_dir / WARM_DIR
        self._slots: dict[str, SandboxRecord] = {}
        # Teardowns under way, whose callers may have been cancelled meanwhile: close waits.
        self._destroying: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._slots)

    async def prepare(self, spec: SandboxSpec) -> str:
        """Build a sandbox for ``spec`` without starting it; its slot name."""
        b = self._backend
        if spec.mounted_files:
            raise InvalidSpec("mounted_files", "a warm sandbox cannot have mounted files")
        if spec.network.exposed_ports:
            raise InvalidSpec("network.exposed_ports", "a warm sandbox cannot expose ports")
        rootfs = b._rootfs(spec.image)
        cgroups = await b._ready()
        slot = SLOT_PREFIX + secrets.token_hex(6)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state_dir = self.dir / slot
        state_dir.mkdir(mode=0o700)
        net = spec.network
        rec = SandboxRecord(slot, state_dir, net.egress, net.cidrs, net.ingress, net.exposed_ports)
        try:
            await b._build(rec, spec, cgroups, rootfs)
        except BaseException as exc:
            rec.kill_agent()
            await b._cleanup(rec)
            if isinstance(exc, SandboxStartError | asyncio.CancelledError):
                raise
            raise SandboxStartError(f"preparing a warm sandbox failed: {exc}") from exc
        self._slots[slot] = rec
        b._disk.refill()  # after the build, like a create
        return slot

    async def claim(self, slot: str, spec: SandboxSpec) -> None:
        """Slot ``slot`` becomes sandbox ``spec.sandbox_id``, started with ``spec``'s settings.

        The agent is asked to start the main process first, and the records move while it
        does (the id-range label, the appended record line and the directory's rename are
        file-system work the start need not wait for).
        """
        b = self._backend
        sid = spec.sandbox_id
        target = b.sandboxes_dir / sid
        if sid in b._records or target.exists():
            raise SandboxExists(f"sandbox {sid!r} already exists")
        rec = self._slots.pop(slot, None)
        if rec is None:
            raise SandboxStartError(f"no warm sandbox {slot!r}")
        hostname = (spec.hostname or sid)[:63]
        starting: socket.socket | None = None
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": hostname, **spec.env}
        request = {
            "op": "start",
            "command": list(spec.command),
            "env": env,
            "workdir": spec.workdir,
            "max_lifetime": spec.max_lifetime_seconds,
        }
        try:
            if not rec.is_running():
                raise SandboxStartError(f"warm sandbox {slot!r} is no longer running")
            _set_hostname(rec, hostname)
            try:
                starting = process.send_request(rec.agent_socket, request)
            except OSError as exc:
                raise SandboxStartError(f"warm sandbox {slot!r} is not running: {exc}") from None
            rec.sandbox_id = sid
            rec.started = True  # the request is out (see LocalBackend.start)
            if rec.ids is not None:
                b._ids.relabel(rec.ids, sid)
            rec.save()  # names the sandbox before the directory moves (see the docstring)
            b.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(rec.state_dir, target)
            rec.state_dir = target
        except BaseException as exc:
            if starting is not None:
                starting.close()
            rec.kill_agent()
            await b._cleanup(rec)
            if isinstance(exc, SandboxStartError | asyncio.CancelledError):
                raise
            raise SandboxStartError(f"claiming warm sandbox {slot!r} failed: {exc}") from exc
        b._records[sid] = rec  # from here a failure is the caller's to destroy, by id
        try:
            reply = await process.reply_to(starting)
        except OSError as exc:
            raise SandboxStartError(f"sandbox {sid!r} is not running: {exc}") from None
        if "error" in reply:
            raise SandboxStartError(f"sandbox {sid!r}: {reply['error']['message']}")

    async def discard(self, slot: str) -> None:
        """Destroy one slot (nothing if it is unknown).

        The teardown goes on if the caller is cancelled (the slot has left ``_slots``, so
        nothing else would tear it down), and :meth:`discard_all` waits for it.
        """
        rec = self._slots.pop(slot, None)
        if rec is not None:
            task = asyncio.ensure_future(self._destroy(rec))
            self._destroying.add(task)
            task.add_done_callback(self._destroying.discard)
            await asyncio.shield(task)

    async def discard_all(self) -> None:
        """Destroy every slot of this process (runner shutdown), all at once.

        Every slot is killed first and then waited for together, so a shutdown on a busy
        host takes one slot's teardown, not the sum of them.
        """
        records = list(self._slots.values())
        self._slots.clear()
        for rec in records:
            rec.kill_agent()
        await asyncio.gather(
            *(self._destroy(rec) for rec in records), *self._destroying, return_exceptions=True
        )

    def names(self) -> set[str]:
        """Every slot this backend has: ready ones and those a predecessor left in ``warm/``."""
        on_disk = {d.name for d in self.dir.iterdir()} if self.dir.is_dir() else set()
        return on_disk | set(self._slots)

    async def discard_prepared(self) -> int:
        """Destroy slots a previous runner process left in ``warm/``; how many there were.

        All are killed first, then waited for together (see :meth:`discard_all`). Only a
        backend alone on its key does so: with another live backend on the same data
        directory (two runners given one directory), the slots there are its ready ones.
        """
        if not self.dir.is_dir():
            return 0
        b = self._backend
        await b._ready()  # holds the key, and tells whether another live backend does
        if not b._owner.alone:
            return 0
        left = [d for d in sorted(self.dir.iterdir()) if d.name not in self._slots]
        records = []
        for state_dir in left:
            try:
                rec = SandboxRecord.load(state_dir)
            except (OSError, ValueError, KeyError, TypeError):
                with contextlib.suppress(BackendError):  # killed mid-build
                    forget_unrecorded(state_dir, b._ids, await b._ready())
                continue
            if rec.lease is not None:
                b._net.claim(rec.lease, rec.sandbox_id)
            if rec.ids is not None:
                b._ids.claim(rec.ids)
            rec.attach()
            rec.kill_agent()
            records.append(rec)
        await asyncio.gather(*(self._destroy(rec) for rec in records), return_exceptions=True)
        return len(left)

    async def _destroy(self, rec: SandboxRecord) -> None:
        rec.kill_agent()
        if rec.pidfd is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(rec.exited_future()), DISCARD_WAIT_SECONDS)
        await self._backend._cleanup(rec)


def _set_hostname(rec: SandboxRecord, hostname: str) -> None:
    """``sethostname`` in the sandbox's UTS namespace, from this thread, which then goes back.

    ``setns`` of a UTS namespace moves only the calling thread and is allowed in a process
    with other threads; entering, naming and leaving take microseconds and nothing else runs
    on this thread meanwhile (no await). A thread of its own used to do it, and waited for
    the interpreter lock behind the busy event loop: 2.4–2.9 ms of every warm claim. The
    namespace is reached through the agent's pidfd (no pid reuse race); the way back is a
    descriptor of this thread's own namespace, taken first.
    """
    target = rec.agent_pidfd
    if target is None:
        raise SandboxStartError(f"warm sandbox {rec.sandbox_id!r} has no agent")
    own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(target, syscalls.CLONE_NEWUTS)
        try:
            socket.sethostname(hostname)
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWUTS)
    finally:
        os.close(own)
