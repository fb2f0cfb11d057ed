"""What the local backend can do on this host (reported to the control plane).

Why a separate probe: the runner calls ``fingerprint()`` before anything else and must get
a clear "unavailable, because ..." rather than an exception from deep inside a create, e.g.
when run without root, without overlayfs, ext4, loop devices or ``mkfs.ext4`` (the
writable layer, ``disk.py``), or without the cpu/memory/pids controllers.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import shutil

from ..base import Fingerprint
from . import seccomp
from .cgroups import CgroupError, detect


def _mem_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _own_memory_limit(bases: dict[str, str], version: int) -> int | None:
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    base = bases.get("memory" if version == 1 else "unified")
    if base is None:
        return None
    try:
        with open(os.path.join(base, name)) as fh:
            raw = fh.read().strip()
    except OSError:
        return None
    return None if raw == "max" else int(raw)


def _userns_problem() -> str | None:
    """Why sandboxes cannot get their own user namespace and idmapped image here, if so."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as fh:
            if int(fh.read()) <= 0:
                return "user namespaces are disabled (sysctl user.max_user_namespaces=0)"
    except (OSError, ValueError):
        return "this kernel has no user namespaces"
    release = platform.release().split(".")
    try:
        version = (int(release[0]), int(release[1].split("-")[0]))
    except (IndexError, ValueError):
        return None
    if version < (5, 19):
        return f"Linux {version[0]}.{version[1]} cannot use idmapped image layers (needs 5.19+)"
    return None


def _disk_problems(filesystems: str) -> list[str]:
    """Why sandboxes cannot get their own ext4 writable layer here (``disk.py``), if so."""
    problems = []
    if "ext4" not in filesystems.split():
        problems.append("ext4 is not available (modprobe ext4)")
    if not os.path.exists("/dev/loop-control"):
        problems.append("loop devices are not available (/dev/loop-control; modprobe loop)")
    if shutil.which("mkfs.ext4") is None:
        problems.append("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    return problems


def probe(name: str, pool: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Fingerprint:
    """Check root, overlayfs and cgroups; list egress/ingress types and capacity."""
    problems: list[str] = []
    attrs: dict[str, str] = {
        "kernel": platform.release(),
        "isolation": "namespaces(user,pid,mount,ipc,uts,net,cgroup)+idmapped overlayfs+cgroups",
        "writable_layer": "ext4 per sandbox (loop device), sized to the disk limit",
        "seccomp": "yes" if seccomp.supported() else "no",
        "network_pool": str(pool),
    }
    if os.geteuid() != 0:
        problems.append("needs root")
    if (problem := _userns_problem()) is not None:
        problems.append(problem)
    with open("/proc/filesystems") as fh:
        filesystems = fh.read()
    if "overlay" not in filesystems:
        problems.append("overlayfs is not available (modprobe overlay)")
    problems += _disk_problems(filesystems)
    memory = _mem_total()
    try:
        layout = detect()
        attrs["cgroup"] = f"v{layout.version}"
        for base in sorted(set(layout.bases.values())):
            if not os.access(base, os.W_OK):
                problems.append(f"cgroup {base} is not writable")
        limit = _own_memory_limit(layout.bases, layout.version)
        if limit is not None:
            memory = min(memory, limit)
    except CgroupError as exc:
        problems.append(str(exc))
    egress = ["none"]
    # The rules are iptables runs; the namespace and veth are system calls (netlink.py).
    if shutil.which("iptables-restore") and shutil.which("iptables"):
        egress += ["internet", "allowlist"]
    ingress = ["public", "internal"]
    attrs["egress_types"] = ",".join(egress)
    attrs["ingress_modes"] = ",".join(ingress)
    return Fingerprint(
        name=name,
        available=not problems,
        reason="; ".join(problems),
        attributes=attrs,
        cpu_millicores=(os.cpu_count() or 1) * 1000,
        memory_bytes=memory,
        egress_types=tuple(egress),
        ingress_types=tuple(ingress),
        gpus=False,  # no device passthrough yet (runner/spec_mapping.py refuses GPU specs)
        volumes=True,  # directories under the data directory (volumes.py)
    )
