"""What the zygote's keeper and the agent are told to build one sandbox (the spawn request).

Why a module of its own: the request is the one contract between the runner and the
processes that build a sandbox (``keeper.run_keeper`` reads it, then ``boot.agent_main``), so
its fields are listed in one place. Descriptors do not go in it: they travel beside it, in
this order, each only when the request says so: the writable layer, the scratch file system
(``scratch``), one detached bind per volume (``volumes``), the network namespace (``netns``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import SandboxSpec
from .state import SandboxRecord


@dataclass(frozen=True)
class SpawnSettings:
    """What every sandbox of one backend gets alike (the backend's configuration)."""

    log_limit: int
    lifetime_grace: float
    seccomp: bool
    max_execs: int
    native_keeper: bool


def spawn_request(  # noqa: PLR0917 (one call site, the create path)
    rec: SandboxRecord,
    spec: SandboxSpec,
    rootfs: Path,
    file_map: list[list[str]],
    env: dict[str, str],
    hostname: str,
    settings: SpawnSettings,
) -> dict[str, Any]:
    """The request for ``rec``, whose id range and cgroup are already made."""
    assert rec.ids is not None and rec.cgroup is not None
    scratch = {"mount_path": spec.scratch.mount_path} if spec.scratch else None
    return {
        "state_dir": str(rec.state_dir),
        "rootfs": str(rootfs),
        "uid_slot": rec.ids.slot,
        "uid_first": rec.ids.first,
        "uid_count": rec.ids.count,
        "disk_bytes": spec.disk_bytes,
        "files": file_map,
        "hostname": hostname[:63],
        "cgroup_procs": rec.cgroup.procs_files(),
        "netns": rec.lease is not None,
        "env": env,
        "workdir": spec.workdir,
        "command": list(spec.command),
        "max_lifetime": spec.max_lifetime_seconds,
        "lifetime_grace": settings.lifetime_grace,
        "log_limit": settings.log_limit,
        "seccomp": settings.seccomp,
        "max_execs": settings.max_execs,
        "native_keeper": settings.native_keeper,
        "scratch": scratch,
        "volumes": [{"mount_path": v.mount_path, "read_only": v.read_only} for v in spec.volumes],
    }
