"""Thin ctypes wrappers for the Linux calls the local backend needs and Python 3.11 lacks.

Why ctypes rather than bubblewrap or ``nsenter``: the sandbox is built by a forked copy of a
small, already-running Python process (see ``zygote.py``), so every namespace, mount and
capability step is a plain system call in that process: no program is executed until the
user's own command (on the host side, only the native keeper and its namespace helper).
This module must import only the standard library, because it is loaded into the zygote
and the in-sandbox agent, which cannot import anything once they have pivoted into the
image's root.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import platform
import socket
import struct
from collections.abc import Callable, Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# securebits: root gets no capabilities on execve and setuid never restores them; all locked.
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` refers to (``setns(2)``)."""
    _check(_libc.setns(fd, nstype), "setns")


def namespace_by_helper(
    flag: int, kind: str, prepare: Callable[[int], None], helper: int | None = None
) -> int:
    """A new namespace (``flag``, e.g. ``CLONE_NEWNET``); an fd of it (``/proc/PID/ns/KIND``).

    A helper child unshares it and waits while ``prepare(pid)`` runs here (a user
    namespace's maps are written then); the namespace lives on through the descriptor
    after the helper exits. Why a helper: the caller (the zygote) must stay where it is.
    ``helper`` is an executable descriptor of ``sandboxd-keeper`` (the zygote's sealed copy),
    started as that helper with ``posix_spawn``: a fork of the Python caller and its exit cost
    several times more CPU (``native/keeper.c`` says how much). Without it, or when it cannot
    be started, the caller forks. Raises ``OSError`` when the helper could not unshare.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = _spawn_native_helper(helper, flag, ready_w, go_r) if helper is not None else None
    if pid is None:
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the helper child
        code = 0
        try:
            os.close(ready_r)
            os.close(go_w)
            unshare(flag)
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(f"could not create a {kind} namespace (unshare failed)")
        prepare(pid)
        return os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)  # EOF releases the helper
        os.waitpid(pid, 0)


def _spawn_native_helper(helper: int, flag: int, ready_w: int, go_r: int) -> int | None:
    """Start ``sandboxd-keeper unshare FLAG READY GO``; its pid, or None if it cannot start.

    The two pipe ends are made inheritable only for the spawn. That is safe in the zygote
    and the keepers, which are single-threaded: no other thread can start a program
    meanwhile and inherit them. The helper closes every other descriptor itself.
    """
    argv = ["sandboxd-nshelp", "unshare", str(flag), str(ready_w), str(go_r)]
    try:
        os.set_inheritable(ready_w, True)
        os.set_inheritable(go_r, True)
        return os.posix_spawn(f"/proc/self/fd/{helper}", argv, {})
    except OSError:  # e.g. a host that refuses to execute memfds: fork as before
        return None
    finally:
        os.set_inheritable(ready_w, False)
        os.set_inheritable(go_r, False)


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """``mount(2)``; raises ``OSError`` naming the target on failure."""
    res = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(res, f"mount {fstype or source or ''} on", target)


def bind_readonly(source: str, target: str, extra: int = MS_NOSUID | MS_NODEV) -> None:
    """Bind ``source`` on ``target`` and make that bind read-only (two calls, as Linux needs)."""
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | extra)


_SYS_OPEN_TREE = 428  # the new mount API has one number on every architecture
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000


def bind_idmapped(source: str, target: str, userns_fd: int, attrs: int = 0) -> None:
    """Bind ``source`` on ``target`` with ids shifted by ``userns_fd``'s mapping.

    Why: the image on disk is owned by host uid 0; seen through this mount, host 0 is
    the sandbox's root (the user namespace's uid 0 → a high host uid), so the sandbox owns
    its image files without a chown'd copy and without ever being host root. One
    ``open_tree`` clone, one ``mount_setattr`` and one ``move_mount``: about 0.1 ms.
    """
    tree = _check(
        _libc.syscall(
            _SYS_OPEN_TREE, -100, _b(source), _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE
        ),
        "open_tree",
        source,
    )
    try:
        attr = struct.pack("QQQQ", MOUNT_ATTR_IDMAP | attrs, 0, 0, userns_fd)
        buf = ctypes.create_string_buffer(attr, len(attr))
        res = _libc.syscall(
            _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE, buf, len(attr)
        )
        _check(res, "mount_setattr (idmapped mounts need Linux 5.12+ and a filesystem "
               "that supports them)", source)  # fmt: skip
        res = _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", -100, _b(target), _MOVE_MOUNT_F_EMPTY_PATH)
        _check(res, "move_mount", target)
    finally:
        os.close(tree)


def clone_tree(dir_fd: int) -> int:
    """A detached bind mount of the directory ``dir_fd`` refers to (``open_tree`` clone).

    Not recursive: nothing mounted below the directory comes along. The descriptor is what
    travels to the agent, so no path is resolved again between the check and the mount.
    """
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH
    return _check(_libc.syscall(_SYS_OPEN_TREE, dir_fd, b"", flags), "open_tree", f"fd {dir_fd}")


def set_mount_attrs(tree_fd: int, attrs: int, userns_fd: int | None = None) -> None:
    """``mount_setattr`` on a detached mount: ``attrs``, and ids shifted by ``userns_fd``."""
    if userns_fd is not None:
        attrs |= MOUNT_ATTR_IDMAP
    attr = struct.pack("QQQQ", attrs, 0, 0, userns_fd if userns_fd is not None else 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    res = _libc.syscall(_SYS_MOUNT_SETATTR, tree_fd, b"", _AT_EMPTY_PATH, buf, len(attr))
    _check(res, "mount_setattr", f"fd {tree_fd}")


def attach_mount(mount_fd: int, target: str) -> None:
    """Attach a detached mount (from ``fsmount``/``open_tree``) at ``target`` (``move_mount``)."""
    res = _libc.syscall(_SYS_MOVE_MOUNT, mount_fd, b"", -100, _b(target), _MOVE_MOUNT_F_EMPTY_PATH)
    _check(res, "move_mount", target)


def attach_mount_at(mount_fd: int, target_fd: int) -> None:
    """Attach a detached mount onto the directory ``target_fd`` refers to (``move_mount``)."""
    flags = _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH
    res = _libc.syscall(_SYS_MOVE_MOUNT, mount_fd, b"", target_fd, b"", flags)
    _check(res, "move_mount", f"fd {target_fd}")


# The new mount API has one set of numbers on every architecture (asm-generic, 5.2+).
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING = 0, 1
_FSCONFIG_CMD_CREATE = 6
FsSetting = tuple[int, bytes, bytes | None]
"""One ``fsconfig`` call: ``FSCONFIG_SET_FLAG`` or ``FSCONFIG_SET_STRING``, key, value."""


def _fs_error(fs: int, what: str) -> OSError:
    err = ctypes.get_errno()
    detail = ""
    try:  # the filesystem's own words, if it left any in the context's log
        os.set_blocking(fs, False)
        detail = os.read(fs, 4096).decode(errors="replace").strip()
    except OSError:
        pass
    return OSError(err, f"{what}: {os.strerror(err)}{f' ({detail})' if detail else ''}")


def mount_fs_detached(
    fstype: str,
    settings: Sequence[FsSetting],
    *,
    made: str,
    optional_flags: Sequence[str] = (),
    attrs: int = 0,
) -> int:
    """A new ``fstype`` file system as a mount attached nowhere (``fsopen``/``fsmount``).

    ``settings`` must all be accepted; ``optional_flags`` are set where the kernel knows
    them (their refusal is read off the context's log, so a later failure reports its own
    words). ``made`` names the creation in its error; ``attrs`` are ``MOUNT_ATTR_*``.
    Returns the mount's descriptor (close-on-exec); ``OSError`` with the kernel's words.
    """
    fs = _libc.syscall(_SYS_FSOPEN, fstype.encode(), _FSOPEN_CLOEXEC)
    if fs < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fsopen {fstype}: {os.strerror(err)}")
    try:
        for cmd, key, value in settings:
            if _libc.syscall(_SYS_FSCONFIG, fs, cmd, key, value, 0) < 0:
                raise _fs_error(fs, f"fsconfig {key.decode()}")
        for name in optional_flags:
            if _libc.syscall(_SYS_FSCONFIG, fs, FSCONFIG_SET_FLAG, name.encode(), None, 0) < 0:
                _fs_error(fs, name)  # not known to this kernel: go on without it
        if _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0) < 0:
            raise _fs_error(fs, made)
        mnt = _libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, attrs)
        if mnt < 0:
            raise _fs_error(fs, "fsmount")
        return int(mnt)
    finally:
        os.close(fs)


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (glibc has no wrapper)."""
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(38, f"pivot_root: unsupported architecture {platform.machine()}")
    res = _libc.syscall(nr, _b(new_root), _b(put_old))
    _check(res, "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)`` (the error text is made only on failure: dozens run per create)."""
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    return result if result >= 0 else _check(result, f"prctl({option})")


def set_process_name(name: str) -> None:
    """Set the comm name shown by ``ps`` (best effort, 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0)


@functools.cache
def argv_area() -> tuple[int, int]:
    """Where this process's argv strings lie: ``(arg_start, arg_end)`` from ``/proc``.

    Read once, by the zygote as it sets its own title: its forks (keepers, agents) have the
    area at the same place, and each read of ``/proc/self/stat`` cost a forked agent about
    0.1 ms on the create path.
    """
    with open("/proc/self/stat", "rb") as fh:
        raw = fh.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[45]), int(fields[46])  # stat fields 48 and 49: arg_start/end


def set_cmdline(title: str) -> None:
    """Overwrite this process's argv area, so ``ps`` shows ``title`` (setproctitle style).

    The agent is a fork of the zygote, whose command line names host paths (the Python
    binary, the source tree, the data directory); the sandbox's own ``ps`` must not show
    them. Python keeps its own copy of argv, so the original area is free to rewrite.
    """
    start, end = argv_area()
    size = end - start
    if size <= 1:
        return
    data = title.encode()[: size - 1]
    ctypes.memset(start, 0, size)
    ctypes.memmove(start, data, len(data))


@functools.cache
def last_cap() -> int:
    """The highest capability number this kernel knows (read once, by the zygote).

    Every agent drops the capabilities up to it; it used to read the file again each time,
    inside the sandbox's own ``/proc``, on every create's path.
    """
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except OSError:
        return 40


def drop_all_capabilities() -> None:
    """Drop every capability for good: bounding, ambient, effective, permitted, inheritable.

    The process stays uid 0 (there is no user namespace), so securebits are set first:
    with ``SECBIT_NOROOT`` locked, executing a program as root no longer hands it the full
    capability set, and ``PR_SET_NO_NEW_PRIVS`` makes setuid/file capabilities inert.
    """
    bits = (
        SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
    )
    prctl(PR_SET_SECUREBITS, bits)
    for cap in range(last_cap() + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    hdr = ctypes.create_string_buffer(header, len(header))
    data = ctypes.create_string_buffer(24)  # two zeroed __user_cap_data_struct
    _check(_libc.capset(hdr, data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def capability_sets(pid: int | str = "self") -> dict[str, int]:
    """Read CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process (used by tests and diagnostics)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                out[key] = int(value.strip(), 16)
    return out


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFADDR = 0x8916
_SIOCSIFNETMASK = 0x891C
_IFF_UP = 0x1


def set_link_up(name: str = "lo") -> None:
    """Bring an interface of the current network namespace up with one ioctl (no ``ip`` run).

    Only reads its flags when it is up already: setting them takes the kernel's network
    configuration lock (RTNL), which a burst of creates keeps busy, and reading does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            up = struct.pack("16sH14x", name.encode(), flags | _IFF_UP)
            fcntl.ioctl(sock, _SIOCSIFFLAGS, up)


def set_ipv4_address(name: str, address: str, prefix_len: int) -> None:
    """Give a link of the current network namespace its IPv4 address (two ioctls, no ``ip``).

    Call it while the link is down: the kernel adds the subnet's route when the link comes
    up, so the class-sized mask ``SIOCSIFADDR`` starts with is never routed.
    """
    mask = socket.inet_ntoa(((1 << 32) - (1 << (32 - prefix_len))).to_bytes(4, "big"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for request, value in ((_SIOCSIFADDR, address), (_SIOCSIFNETMASK, mask)):
            sockaddr = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(value))
            fcntl.ioctl(sock, request, struct.pack("16s16s", name.encode(), sockaddr))


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, to tell a process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])
