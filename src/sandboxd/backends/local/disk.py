"""The sandbox's writable layer: its own ext4 filesystem, on disk, exactly the disk cap in size.

What a sandbox writes (the overlay's *upper* layer) lives on a filesystem of its own: an
ext4 image whose size as ``df`` shows it is the sandbox's disk limit (``disk_bytes``), on a
loop device, mounted only inside the sandbox's mount namespace. So:

* writes go to disk, not memory: a sandbox with 1 GiB of memory can write 4 GiB (its page
  cache is charged to it and reclaimed like any file's; it is not pinned as tmpfs was);
* a write past the cap fails with ``ENOSPC`` ("No space left on device"), because the
  filesystem is full, and ``df /`` inside shows the cap as the size; inodes are capped too
  (one per 16 KiB, at least 4,096), also answered with ``ENOSPC``;
* nothing is shared: no sandbox can reach another's blocks, inodes or directories, or
  change its own limit (there is no limit to change, only the size of its filesystem);
* nothing is left behind: the image is an unnamed ``O_TMPFILE``, the loop device clears
  itself and the mount exists only in the sandbox's namespace (before that, only as a
  descriptor), so when the sandbox's last process exits the kernel frees all of it, whether
  the runner destroyed it, crashed (SIGKILL mid-create included) or was restarted.
  ``recover()`` has nothing to reclaim, and a re-adopted sandbox keeps its layer because
  it never depended on the runner.

Why not the recommended XFS project quotas (one shared filesystem, a project id and a hard
block limit per sandbox directory): the kernel our runners and CI run on (6.18, tried
first) is built without quota support for XFS (``CONFIG_XFS_QUOTA`` is off: mounting with
``prjquota`` logs "quota support not available in this kernel"), without the quota formats
ext4 needs (``CONFIG_QFMT_V2``: "The kernel was not built with CONFIG_QUOTA and
CONFIG_QFMT_V2") and without tmpfs quotas; and where quotas exist, only XFS answers
``ENOSPC`` at a project's limit: ext4 and btrfs answer ``EDQUOT`` ("Disk quota exceeded").
A filesystem per sandbox needs none of that (ext4 and loop devices are in every kernel), and
no project ids to allocate, record, reclaim after a crash or keep apart between two runners
on one host: those share only the kernel's loop devices, each of which it gives to one
caller at a time.

What it costs. ``mkfs.ext4`` takes several milliseconds, so the runner makes one
**template** per size, once, calibrated so that ``df`` shows exactly the cap
(``disk_template.py``); the first create of a new size waits for it (8 to 20 ms). Copying
a template's data, attaching a loop device and mounting take another 1.5 ms (p99 8 ms), so
:class:`DiskLayers` keeps a few layers of the sizes last asked for **ready**, as detached
mounts (``disk_mount.py``), and makes more in a thread while sandboxes run: a create takes
one (0.013 ms) and passes it to the agent, which attaches it with one ``move_mount``
(0.009 ms, less than the tmpfs mount it replaces; ``bench/disk.py``). A burst larger than
the ready pool makes the rest on the spot (slower, never wrong). Ready layers cost a
loop device and a few hundred KiB of kernel memory each, and no disk beyond their
metadata; they are closed with the backend, and vanish with the runner if it dies.

Ending a sandbox unmounts its layer in the kernel's exit path, which still writes the
layer's dirty pages to its image before freeing it: at most the sandbox's memory limit of
wasted writes. (``EXT4_IOC_SHUTDOWN`` before the end could skip them; nothing on the host
holds the layer to call it on, by design.)

Images are sparse and the caps of all sandboxes may add up to more than the host's disk
(like memory limits). Online discard gives the host back what a sandbox deletes. A create
is refused while the data directory's filesystem has less free space than the smaller of
the sandbox's cap and :data:`MIN_FREE_BYTES`: that host is full. If the host disk fills up
anyway, writes into sandboxes fail with I/O errors and their layers turn read-only
(``errors=remount-ro``); the host itself is untouched. Keep the data directory on a
filesystem with room for what the sandboxes will really write.

Runs in the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict, deque
from pathlib import Path

from .disk_template import DiskError, DiskFull, Template, cap_blocks, disk_error, make_template

log = logging.getLogger(__name__)
MIN_FREE_BYTES = 1 << 30
DEFAULT_READY = 4  # layers kept ready per size, like the user namespaces (prepared_ids.py)
READY_SIZES = 2  # sizes kept ready: the ones most recently asked for


class DiskLayers:
    """The writable layers of one runner's sandboxes: templates, and a few made ahead."""

    def __init__(self, disk_dir: Path, ready: int = DEFAULT_READY) -> None:
        self.disk_dir = disk_dir
        self.depth = ready
        self._templates: dict[int, Template] = {}
        self._making: dict[int, asyncio.Future[Template]] = {}
        self._ready: OrderedDict[int, deque[int]] = OrderedDict()  # cap -> mount fds, LRU
        self._refills: dict[int, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def ready(self) -> int:
        """How many layers are made and waiting (each holds a loop device)."""
        return sum(len(fds) for fds in self._ready.values())

    def room(self) -> int | None:
        """The largest layer :meth:`check_room` lets through now (None: any size)."""
        for where in (self.disk_dir, self.disk_dir.parent):  # made by the first create
            with contextlib.suppress(OSError):
                st = os.statvfs(where)
                free = st.f_bavail * st.f_frsize
                return None if free >= MIN_FREE_BYTES else free
        return None

    def check_room(self, disk_bytes: int) -> None:
        """Refuse a layer while the host filesystem is (nearly) full; see the module doc."""
        self.disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = self.room()  # None: 1 GiB or more
        if free is not None and disk_bytes > free:
            raise DiskFull(
                f"the runner's disk is full: {free >> 20} MiB free in {self.disk_dir}, "
                f"a {disk_bytes >> 20} MiB writable layer needs at least "
                f"{min(disk_bytes, MIN_FREE_BYTES) >> 20} MiB"
            )

    async def take(self, disk_bytes: int) -> int:
        """A fresh layer of ``disk_bytes``, as a detached mount; the caller owns the fd.

        A ready one if there is one, else made now. Call :meth:`refill` once the create
        that took it no longer needs the CPU.
        """
        self.check_room(disk_bytes)
        cap = cap_blocks(disk_bytes)
        ready = self._ready.get(cap)
        if ready:
            fd = ready.popleft()
        else:
            try:
                fd = await self._prepare(await self.template(cap))
            except OSError as exc:
                raise disk_error(f"a writable layer of {disk_bytes} bytes", exc) from exc
        self._ready.setdefault(cap, deque())
        self._ready.move_to_end(cap)
        while len(self._ready) > READY_SIZES:  # a size nobody asked for lately
            _cap, fds = self._ready.popitem(last=False)
            for old in fds:
                os.close(old)
        return fd

    async def template(self, cap: int) -> Template:
        """The template of ``cap`` blocks, made now (in a thread) if needed."""
        template = self._templates.get(cap)
        if template is not None and template.path.exists():
            return template
        making = self._making.get(cap)
        if making is None:  # one thread makes each size; concurrent creates share it
            making = asyncio.ensure_future(asyncio.to_thread(make_template, self.disk_dir, cap))
            self._making[cap] = making
            making.add_done_callback(lambda _f: self._making.pop(cap, None))
        try:
            template = await asyncio.shield(making)
        except OSError as exc:
            raise disk_error(f"the disk template of {cap} blocks", exc) from exc
        self._templates[cap] = template
        return template

    async def _prepare(self, template: Template) -> int:
        """``template.prepare()`` in a thread; a layer made for a cancelled caller is closed."""
        future = asyncio.get_running_loop().run_in_executor(None, template.prepare)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_result)
            raise

    def refill(self) -> None:
        """Make layers ready again, in the background, for the sizes recently asked for."""
        if self._closed or self.depth <= 0:
            return
        for cap, fds in self._ready.items():
            task = self._refills.get(cap)
            if len(fds) < self.depth and (task is None or task.done()):
                self._refills[cap] = asyncio.get_running_loop().create_task(self._refill(cap))

    async def _refill(self, cap: int) -> None:
        try:
            template = await self.template(cap)
            while not self._closed and cap in self._ready and len(self._ready[cap]) < self.depth:
                fd = await self._prepare(template)
                fds = self._ready.get(cap)
                if self._closed or fds is None:  # closed, or the size was dropped meanwhile
                    os.close(fd)
                    return
                fds.append(fd)
        except (OSError, DiskError) as exc:
            log.warning("could not make a writable layer ahead: %s", exc)

    async def settle(self) -> None:
        """Wait until no layer is being made ahead (for tests and benchmarks)."""
        tasks = [t for t in self._refills.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Stop making layers and free the ready ones (their devices and images go too)."""
        self._closed = True
        for task in self._refills.values():
            task.cancel()
        for task in self._refills.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._refills.clear()
        for fds in self._ready.values():
            while fds:
                os.close(fds.popleft())
        self._ready.clear()


def _close_result(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result())
