"""The ``cwsandbox`` command: discovery, sandboxes, exec/sh, logs and cp.

Each group of commands lives in its own module and registers itself on the root group in
``_app``; adding commands means adding modules, not growing one.
"""

from __future__ import annotations

from cwsandbox.cli._app import CliError, cli, main

__all__ = ["CliError", "cli", "main"]
