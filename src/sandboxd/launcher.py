"""The ``sandboxd`` command's entry point: says what to install when the server is missing.

Why: ``pip install sandboxd`` installs the client and its light dependencies only; the
control plane, runners and console need ``pip install 'sandboxd[server]'``. Without them,
importing the command would end in a traceback about some module; this names the extra
instead.
"""

from __future__ import annotations

import sys

__all__ = ["SERVER_MODULES", "main"]

SERVER_MODULES = frozenset({
    "alembic", "cryptography", "platformdirs", "prometheus_client", "pydantic", "sortedcontainers",
    "sqlalchemy", "starlette", "uvicorn", "websockets", "yaml",
})  # fmt: skip
"""Top-level modules of the ``server`` extra's packages."""


def main() -> None:
    """Run ``sandboxd``; exit 1 naming the ``server`` extra when its packages are missing."""
    try:
        from sandboxd.cli import main as command
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in SERVER_MODULES:
            raise
        sys.stderr.write(
            f"sandboxd: the server is not installed (no module {missing!r}); "
            "install it with: pip install 'sandboxd[server]'\n"
        )
        raise SystemExit(1) from None
    command()
