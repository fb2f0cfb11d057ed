"""Sandbox backends: the interface (``base``), the errors, and the catalog of built-ins.

The catalog maps a backend name, as written in runner configuration, to the class that
implements it. Entries are import paths, loaded on first use, so that importing the catalog
never pulls in a backend's own dependencies (and the local backend's zygote, which imports
this package, stays small).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend

BUILTIN_BACKENDS: dict[str, str] = {
    "local": "sandboxd.backends.local.backend:LocalBackend",
}


def backend_names() -> list[str]:
    """Names of the built-in backends."""
    return sorted(BUILTIN_BACKENDS)


def get_backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        target = BUILTIN_BACKENDS[name]
    except KeyError:
        known = ", ".join(backend_names())
        raise KeyError(f"unknown backend {name!r} (known: {known})") from None
    module_name, _, attr = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), attr)
    return cls


__all__ = ["BUILTIN_BACKENDS", "backend_names", "get_backend_class"]
