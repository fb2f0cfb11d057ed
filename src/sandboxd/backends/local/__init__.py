"""The local backend: real Linux isolation on the runner's own host.

Module map (each says why in its docstring): ``backend`` (the ``Backend`` implementation),
``cgroups`` and ``parent_cgroup``, ``network``, ``egress`` and ``ingress`` (host-side setup),
``process`` (exec sessions and agent client), ``zygote`` → ``agent`` →
``rootfs``/``fileops`` (what runs inside), and ``syscalls``/``seccomp``/``protocol``/
``logfile`` (shared, standard library only).

``LocalBackend`` is loaded lazily: the zygote imports this package and must stay small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import LocalBackend


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from .backend import LocalBackend

        return LocalBackend
    raise AttributeError(name)


__all__ = ["LocalBackend"]
