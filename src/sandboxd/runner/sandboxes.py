"""Sandboxes on a runner: the public face of the supervisor and the local backend's set-up.

Module map (each says why in its docstring): ``supervisor`` (commands), ``sandbox_table``
(state, watchers, lifetime, recovery), ``sandbox_state`` (one sandbox and its event),
``spec_mapping`` (profile re-check, runner spec → backend spec), ``exec_relay`` (an exec's
frames), ``log_relay`` and ``log_stream`` (a log stream), ``images`` (what images to
advertise), ``failures`` (errors → public reasons) and ``records`` (what survives a restart).

:func:`build_runner_backend` is what ``sandboxd runner --backend NAME`` and ``sandboxd up``
use, so both lay out a data directory the same way: the backend's state where its
``from_config`` puts it (``<data_dir>/backend`` for the local backend) and images under
``<data_dir>/images``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sandboxd.runner.exec_relay import ExecCall, ExecDialer, dial_exec
from sandboxd.runner.supervisor import SandboxSupervisor, Send

if TYPE_CHECKING:
    from sandboxd.backends.base import Backend
    from sandboxd.runner.capacity import HostReserve

__all__ = [
    "ExecCall",
    "ExecDialer",
    "SandboxSupervisor",
    "Send",
    "build_local_backend",
    "build_runner_backend",
    "dial_exec",
]


def build_local_backend(data_dir: str | Path, reserve: HostReserve | None = None) -> Backend:
    """The local backend: :func:`build_runner_backend` for ``local``."""
    return build_runner_backend("local", data_dir, reserve)


def build_runner_backend(
    name: str, data_dir: str | Path, reserve: HostReserve | None = None
) -> Backend:
    """Backend ``name`` from the catalog, keeping its state and images under ``data_dir``.

    Nothing is started here (a backend checks what it needs on first use and reports why in
    its fingerprint), so this is cheap and safe to call before the event loop runs. All
    sandboxes together are bounded by the runner's allocatable capacity with ``reserve``
    kept for the host (``capacity.py``): the same numbers the runner reports. ``KeyError``
    names the known backends when ``name`` is not one.
    """
    from sandboxd.backends import build_backend
    from sandboxd.backends.base import BackendConfig
    from sandboxd.runner.capacity import HostReserve, parent_limits

    root = Path(data_dir).absolute()
    limits = parent_limits(reserve or HostReserve())
    return build_backend(name, BackendConfig(root, limits.cpu_millicores, limits.memory_bytes))
