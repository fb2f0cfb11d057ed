"""A small seccomp deny-list, built by hand as classic BPF.

Why: sandbox processes are uid 0 without capabilities and without a user namespace. Dropping
capabilities already makes ``mount``, raw sockets and module loading fail, but a process with
no capabilities may still create a *user* namespace and gain a full capability set inside
it, which opens much more kernel attack surface (and the kernel keyring is shared per uid).
This filter closes those doors: namespace creation/joining, the new mount API, keyrings,
``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring`` and a few admin calls fail with
``EPERM``; ``clone3`` fails with ``ENOSYS`` so libc falls back to ``clone``, whose flags the
filter can inspect. Only x86_64 has a table; elsewhere the filter is skipped and the
fingerprint says so. Standard library only (loaded in the agent).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from . import syscalls

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_LD_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_AND = 0x54
_RET = 0x06

_CLONE = 56
_CLONE3 = 435
_NAMESPACE_FLAGS = (
    syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWCGROUP
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWIPC
    | syscalls.CLONE_NEWUSER
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWNET
)

# x86_64 numbers: unshare setns mount umount2 pivot_root swapon swapoff reboot acct
# init_module delete_module finit_module kexec_load kexec_file_load keyctl add_key
# request_key bpf perf_event_open userfaultfd open_tree move_mount fsopen fsconfig fsmount
# fspick mount_setattr io_uring_setup io_uring_enter io_uring_register
DENIED_X86_64 = (
    272, 308, 165, 166, 155, 167, 168, 169, 163, 175, 176, 313, 246, 320,
    250, 248, 249, 321, 298, 323, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427,
)  # fmt: skip


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_filter() -> bytes:
    """Assemble the filter program (x86_64)."""
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(_JGE, 0, 1, _X32_BIT),
        _insn(_RET, 0, 0, eperm),
        _insn(_JEQ, 0, 1, _CLONE3),
        _insn(_RET, 0, 0, _RET_ERRNO | errno.ENOSYS),
    ]
    for nr in DENIED_X86_64:
        prog.append(_insn(_JEQ, 0, 1, nr))
        prog.append(_insn(_RET, 0, 0, eperm))
    prog += [
        _insn(_JEQ, 1, 0, _CLONE),
        _insn(_RET, 0, 0, _RET_ALLOW),
        _insn(_LD_ABS, 0, 0, 16),  # low 32 bits of args[0]: clone flags
        _insn(_AND, 0, 0, _NAMESPACE_FLAGS),
        _insn(_JEQ, 0, 1, 0),
        _insn(_RET, 0, 0, _RET_ALLOW),
        _insn(_RET, 0, 0, eperm),
    ]
    return b"".join(prog)


def supported() -> bool:
    """Whether this machine has a filter table."""
    return platform.machine() == "x86_64"


def install() -> bool:
    """Install the filter on the calling thread (inherited by children); False if unsupported.

    Needs ``PR_SET_NO_NEW_PRIVS`` (set by ``drop_all_capabilities``) or ``CAP_SYS_ADMIN``.
    """
    if not supported():
        return False
    code = build_filter()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    syscalls.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(pbuf))
    return True
