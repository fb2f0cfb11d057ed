"""Sandbox backends: the interface (``base``), the errors, and the catalog.

The catalog maps a backend name, as written in runner configuration (``sandboxd runner
--backend NAME``), to the class that implements it: the built-ins below, plus any backend an
installed distribution registers under the ``sandboxd.backends`` entry-point group (e.g.
``[project.entry-points."sandboxd.backends"] vm = "mypkg.vm:VmBackend"``). Entries are
loaded on first use, so that importing the catalog never pulls in a backend's own
dependencies (and the local backend's zygote, which imports this package, stays small).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend, BackendConfig

ENTRY_POINT_GROUP = "sandboxd.backends"
BUILTIN_BACKENDS: dict[str, str] = {
    "local": "sandboxd.backends.local.backend:LocalBackend",
}


def _catalog() -> dict[str, str]:
    """Every known backend name and its ``module:Class``; a built-in wins a name clash.

    ``importlib.metadata`` is imported here, not at the top: it pulls in ``email``,
    ``zipfile`` and more (about 7 MB), and the local backend's zygote, which imports this
    package, would carry them into the fork of every sandbox.
    """
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN_BACKENDS}


def backend_names() -> list[str]:
    """Names of the built-in backends."""
    return sorted(BUILTIN_BACKENDS)


def available_backend_names() -> list[str]:
    """Names of every backend in the catalog: built-ins and installed entry points."""
    return sorted(_catalog())


def get_backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``; ``KeyError`` naming the known ones otherwise."""
    catalog = _catalog()
    try:
        target = catalog[name]
    except KeyError:
        known = ", ".join(sorted(catalog))
        raise KeyError(f"unknown backend {name!r} (known: {known})") from None
    module_name, _, attr = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), attr)
    return cls


def build_backend(name: str, config: BackendConfig) -> Backend:
    """The backend ``name`` from the catalog, built for ``config``."""
    return get_backend_class(name).from_config(config)


__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "available_backend_names",
    "backend_names",
    "build_backend",
    "get_backend_class",
]
