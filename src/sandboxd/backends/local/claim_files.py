"""Host-wide claim files, created whole: sandbox subnets and user id ranges.

Standard library only: the zygote imports it with ``userns.py``. The claims are read by every
backend on the host and by the orphan sweep (``network.py``, ``userns.py``, ``orphans.py``).
"""

from __future__ import annotations

import os


class ClaimWriter:
    """Claim files that appear whole: created and filled in one step, or not at all.

    Why: a claim used to be created empty (an exclusive create) and filled in after; a
    runner killed in between left an empty claim, which names no backend and no sandbox, so
    no reaper (the orphan sweep, ``claims``) could ever give the subnet back: it stayed
    taken on the host until reboot (one was found after a CI run of the fault tests). Now
    the line is written to an unnamed file (``O_TMPFILE``) first and the file is then linked
    under the claim's name, which fails if that name is taken, so a claim is there with its
    line or not there, whenever the process dies. An unnamed file is offered to one index
    after another until one is free; once linked it is used up (a file that was linked can
    never be linked again after its name is removed). Where the filesystem has no
    ``O_TMPFILE``, or the link cannot be made (no ``/proc``), the claim is created
    exclusively and written at once, as before.
    """

    def __init__(self, directory: str, line: str) -> None:
        self._directory = directory
        self._line = line.encode()
        self._fd: int | None = None
        self._proc: int | None = None  # /proc/self/fd, opened on first use
        self._unnamed = True  # until the filesystem says it has no unnamed files

    def __enter__(self) -> ClaimWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close()
        if self._proc is not None:
            os.close(self._proc)
            self._proc = None

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _unnamed_file(self) -> int | None:
        if self._fd is None and self._unnamed:
            try:
                fd = os.open(self._directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError:  # EOPNOTSUPP, EISDIR: this filesystem makes no unnamed files
                self._unnamed = False
                return None
            try:
                os.write(fd, self._line)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def place(self, path: str) -> bool:
        """Make ``path`` the claim, holding the line; False if ``path`` exists already."""
        fd = self._unnamed_file()
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                return False
            try:
                os.write(fd, self._line)
            finally:
                os.close(fd)
            return True
        try:
            # linkat(/proc/self/fd, "N", path, AT_SYMLINK_FOLLOW): the file, not the /proc
            # link (os.link without a directory descriptor calls link(2), which follows none).
            os.link(str(fd), path, src_dir_fd=self._proc_fds(), follow_symlinks=True)
        except FileExistsError:
            return False
        except OSError:  # no /proc here, or such links refused: create and write, as before
            self._unnamed = False
            self._close()
            return self.place(path)
        self._close()  # linked: the next claim needs a file of its own
        return True

    def _proc_fds(self) -> int:
        if self._proc is None:
            self._proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._proc


__all__ = ["ClaimWriter"]
