"""The sandbox's seccomp filter, assembled by hand as classic BPF, for x86_64 and aarch64.

Why a filter at all, with user namespaces and no capabilities: each denied call is kernel
attack surface the sandbox never needs, and most of the kernel's privilege-escalation bugs
of the last years were reached through exactly these doors (nested user namespaces, the
mount API, io_uring, bpf, userfaultfd, keyrings, perf). Denied calls fail with ``EPERM``;
``clone3`` fails with ``ENOSYS`` so libc falls back to ``clone``, whose flags the filter
can inspect (namespace flags are refused). Sockets are limited to the families a sandbox
needs: ``AF_UNIX``, ``AF_INET``, ``AF_INET6`` and netlink's route protocol (``ip``,
``getaddrinfo``); everything else, ``AF_VSOCK`` (the hypervisor's socket space),
``AF_PACKET``, ``AF_ALG`` and the rest, fails with ``EAFNOSUPPORT`` as on a kernel built
without them. A call from another ABI (x32, i386 through ``int 0x80``, arm32) kills the
process: nothing legitimate in a 64-bit image makes one.

Why by hand rather than libseccomp: the filter is installed by the agent (standard library
only, after it pivoted into the image) and is small enough to assemble and to check with
an interpreter in the tests (``tests/backends/test_local_seccomp.py``) for both tables.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from dataclasses import dataclass

from . import syscalls

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# classic BPF opcodes
LD_ABS_W = 0x20
JEQ_K = 0x15
JGE_K = 0x35
AND_K = 0x54
RET_K = 0x06

# struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian low halves)
OFF_NR = 0
OFF_ARCH = 4
OFF_ARG0 = 16
OFF_ARG2 = 32

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NETLINK_ROUTE = 0
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)

NAMESPACE_FLAGS = (
    syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWCGROUP
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWIPC
    | syscalls.CLONE_NEWUSER
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWNET
)

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot",
    "acct", "init_module", "delete_module", "finit_module", "kexec_load", "kexec_file_load",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "quotactl", "syslog", "lookup_dcookie", "nfsservctl",
)  # fmt: skip


@dataclass(frozen=True)
class Arch:
    """One architecture's audit value and system call numbers."""

    name: str
    audit: int
    numbers: dict[str, int]


X86_64 = Arch(
    "x86_64",
    AUDIT_ARCH_X86_64,
    {
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "init_module": 175,
        "delete_module": 176, "finit_module": 313, "kexec_load": 246, "kexec_file_load": 320,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "open_by_handle_at": 304, "quotactl": 179, "syslog": 103, "lookup_dcookie": 212,
        "nfsservctl": 180, "clone": 56, "clone3": 435, "socket": 41, "socketpair": 53,
    },
)  # fmt: skip

AARCH64 = Arch(
    "aarch64",
    AUDIT_ARCH_AARCH64,
    {
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "init_module": 105,
        "delete_module": 106, "finit_module": 273, "kexec_load": 104, "kexec_file_load": 294,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "open_by_handle_at": 265, "quotactl": 60, "syslog": 116, "lookup_dcookie": 18,
        "nfsservctl": 42, "clone": 220, "clone3": 435, "socket": 198, "socketpair": 199,
    },
)  # fmt: skip

ARCHES = {"x86_64": X86_64, "aarch64": AARCH64}
_CACHE: dict[str, bytes] = {}  # the program, assembled once (in the zygote, before forks)


class _Asm:
    """A tiny assembler: instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def ret(self, value: int) -> None:
        self.op(RET_K, value)

    def assemble(self) -> bytes:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                if isinstance(target, str):
                    delta = self.labels[target] - pc - 1
                    if not 0 <= delta <= 255:
                        raise ValueError(f"jump to {target} out of range ({delta})")
                    offsets.append(delta)
                else:
                    offsets.append(target)
            out.append(struct.pack("HBBI", code, offsets[0], offsets[1], k))
        return b"".join(out)


def _section(asm: _Asm, arch: Arch) -> None:
    n = arch.numbers
    p = arch.name
    eperm = RET_ERRNO | errno.EPERM
    asm.label(p)
    asm.op(LD_ABS_W, OFF_NR)
    if arch is X86_64:
        asm.op(JGE_K, X32_SYSCALL_BIT, f"{p}.kill", 0)
    asm.op(JEQ_K, n["clone3"], f"{p}.enosys", 0)
    asm.op(JEQ_K, n["clone"], f"{p}.clone", 0)
    asm.op(JEQ_K, n["socket"], f"{p}.socket", 0)
    asm.op(JEQ_K, n["socketpair"], f"{p}.socketpair", 0)
    for name in DENIED:
        asm.op(JEQ_K, n[name], f"{p}.eperm", 0)
    asm.ret(RET_ALLOW)
    asm.label(f"{p}.clone")
    asm.op(LD_ABS_W, OFF_ARG0)
    asm.op(AND_K, NAMESPACE_FLAGS)
    asm.op(JEQ_K, 0, f"{p}.allow", f"{p}.eperm")
    asm.label(f"{p}.socket")
    asm.op(LD_ABS_W, OFF_ARG0)
    for family in ALLOWED_FAMILIES:
        asm.op(JEQ_K, family, f"{p}.allow", 0)
    asm.op(JEQ_K, AF_NETLINK, 0, f"{p}.eafnosupport")
    asm.op(LD_ABS_W, OFF_ARG2)
    asm.op(JEQ_K, NETLINK_ROUTE, f"{p}.allow", f"{p}.eprotonosupport")
    asm.label(f"{p}.socketpair")
    asm.op(LD_ABS_W, OFF_ARG0)
    asm.op(JEQ_K, AF_UNIX, f"{p}.allow", f"{p}.eafnosupport")
    asm.label(f"{p}.allow")
    asm.ret(RET_ALLOW)
    asm.label(f"{p}.eperm")
    asm.ret(eperm)
    asm.label(f"{p}.enosys")
    asm.ret(RET_ERRNO | errno.ENOSYS)
    asm.label(f"{p}.eafnosupport")
    asm.ret(RET_ERRNO | errno.EAFNOSUPPORT)
    asm.label(f"{p}.eprotonosupport")
    asm.ret(RET_ERRNO | errno.EPROTONOSUPPORT)
    asm.label(f"{p}.kill")
    asm.ret(RET_KILL_PROCESS)


def build_filter() -> bytes:
    """The whole program: dispatch on the ABI, then one section per architecture."""
    asm = _Asm()
    asm.op(LD_ABS_W, OFF_ARCH)
    for arch in ARCHES.values():
        asm.op(JEQ_K, arch.audit, arch.name, 0)
    asm.ret(RET_KILL_PROCESS)
    for arch in ARCHES.values():
        _section(asm, arch)
    return asm.assemble()


def prepare() -> None:
    """Assemble the program now (the zygote does, once, so forks only install it)."""
    if "program" not in _CACHE and supported():
        _CACHE["program"] = build_filter()


def supported() -> bool:
    """Whether this machine's architecture has a table."""
    return platform.machine() in ARCHES


def install() -> bool:
    """Install the filter on the calling thread (inherited by children); False if unsupported.

    Needs ``PR_SET_NO_NEW_PRIVS`` (set by ``drop_all_capabilities``) or ``CAP_SYS_ADMIN``.
    """
    if not supported():
        return False
    prepare()
    code = _CACHE["program"]
    buf = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    syscalls.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(pbuf))
    return True
