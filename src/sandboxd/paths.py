"""Where sandboxd keeps state when not told otherwise.

Why one function: ``sandboxd up``, ``sandboxd controlplane``, ``sandboxd runner`` and
``sandboxd images`` must agree on the data directory, or images built with one command would
be invisible to another.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def default_data_dir() -> Path:
    """``$SANDBOXD_DATA_DIR``, else the user's data directory (e.g. ~/.local/share/sandboxd)."""
    override = os.environ.get("SANDBOXD_DATA_DIR")
    return Path(override) if override else platformdirs.user_data_path("sandboxd")
