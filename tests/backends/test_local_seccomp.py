"""The seccomp program, run through a classic-BPF interpreter for every architecture.

Why an interpreter: the kernel only ever runs the filter for the machine's own
architecture, so the aarch64 table would otherwise ship untested from an x86_64 CI. This
interpreter implements exactly the instructions the assembler emits (and fails on any
other), feeds it ``struct seccomp_data`` for each call we care about, and checks the
verdict. The real kernel checks the x86_64 half in ``test_local_boundary.py``.
"""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from sandboxd.backends.local import seccomp, syscalls

ALLOW = seccomp.RET_ALLOW
KILL = seccomp.RET_KILL_PROCESS


def err(code: int) -> int:
    return seccomp.RET_ERRNO | code


def run_filter(program: bytes, data: bytes) -> int:
    """Execute ``program`` on ``data`` (a seccomp_data) and return the verdict."""
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc = 0
    pc = 0
    for _ in range(len(insns) + 1):  # no backward jumps exist, so this bounds the run
        code, jt, jf, k = insns[pc]
        if code == seccomp.LD_ABS_W:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == seccomp.JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == seccomp.AND_K:
            acc &= k
            pc += 1
        elif code == seccomp.RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("fell off the end of the program")


def seccomp_data(arch: int, nr: int, *args: int) -> bytes:
    padded = [*args, *([0] * (6 - len(args)))]
    return struct.pack("<iIQ6Q", nr, arch, 0, *padded)


PROGRAM = seccomp.build_filter()


@pytest.mark.parametrize("arch", list(seccomp.ARCHES.values()), ids=lambda a: a.name)
def test_verdicts(arch: seccomp.Arch) -> None:
    n = arch.numbers

    def verdict(name: str, *args: int) -> int:
        return run_filter(PROGRAM, seccomp_data(arch.audit, n[name], *args))

    for name in seccomp.DENIED:
        assert verdict(name) == err(errno.EPERM), name
    assert verdict("clone3") == err(errno.ENOSYS)
    assert verdict("clone", 0x11) == ALLOW  # SIGCHLD: a plain fork
    for flag in (syscalls.CLONE_NEWUSER, syscalls.CLONE_NEWNS, syscalls.CLONE_NEWNET):
        assert verdict("clone", flag | 0x11) == err(errno.EPERM)
    for family in (seccomp.AF_UNIX, seccomp.AF_INET, seccomp.AF_INET6):
        assert verdict("socket", family, 1, 0) == ALLOW
    assert verdict("socket", seccomp.AF_NETLINK, 3, seccomp.NETLINK_ROUTE) == ALLOW
    assert verdict("socket", seccomp.AF_NETLINK, 3, 9) == err(errno.EPROTONOSUPPORT)  # audit
    for family in (40, 17, 38, 4, 3):  # vsock, packet, alg, ipx, ax25
        assert verdict("socket", family, 1, 0) == err(errno.EAFNOSUPPORT), family
    assert verdict("socketpair", seccomp.AF_UNIX, 1, 0) == ALLOW
    assert verdict("socketpair", seccomp.AF_INET, 1, 0) == err(errno.EAFNOSUPPORT)
    # an ordinary call (read is 0 on x86_64, 63 on aarch64) passes untouched
    read_nr = 0 if arch is seccomp.X86_64 else 63
    assert run_filter(PROGRAM, seccomp_data(arch.audit, read_nr)) == ALLOW


def test_other_abis_are_killed() -> None:
    i386, arm32 = 0x40000003, 0x40000028
    for audit in (i386, arm32, 0):
        assert run_filter(PROGRAM, seccomp_data(audit, 0)) == KILL
    x32_read = seccomp.X32_SYSCALL_BIT | 0
    assert run_filter(PROGRAM, seccomp_data(seccomp.AUDIT_ARCH_X86_64, x32_read)) == KILL


def test_tables_cover_every_name() -> None:
    needed = {*seccomp.DENIED, "clone", "clone3", "socket", "socketpair"}
    for arch in seccomp.ARCHES.values():
        assert needed <= set(arch.numbers), arch.name
        assert len(set(arch.numbers.values())) == len(arch.numbers), "numbers must be distinct"


def test_tables_match_the_kernel_headers() -> None:
    """Both tables against linux-libc-dev's headers (installed by scripts/setup.sh)."""
    headers = [
        (seccomp.X86_64, Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")),
        (seccomp.AARCH64, Path("/usr/include/asm-generic/unistd.h")),  # the generic table
    ]
    present = [(arch, path) for arch, path in headers if path.exists()]
    if not present:  # the x86_64 header only exists on x86_64 machines
        pytest.skip("kernel headers (linux-libc-dev) are not installed")
    for arch, path in present:
        text = path.read_text()
        for name, nr in arch.numbers.items():
            pattern = rf"#define __NR(?:3264)?_{name}\s+{nr}\b"
            assert re.search(pattern, text), (arch.name, name, nr)
