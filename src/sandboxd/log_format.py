"""``--log-format json``: one JSON object per log line, with who and what it concerns.

Why: operators feed logs to a search engine and filter by sandbox, runner or organization;
parsing free text for ids breaks the first time a message is reworded. Every line carries
``time``, ``level``, ``logger`` and ``message``, and, when the line was logged while serving
a call, the caller's ``organization`` (API keys) or ``runner_id`` (runner credentials) and the
``sandbox_id`` the call is about; a runner process adds its own ``runner_id`` to each line.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "bind_sandbox", "setup_logging"]

_sandbox: ContextVar[str] = ContextVar("sandboxd_log_sandbox", default="")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind_sandbox(sandbox_id: str) -> None:
    """Name the sandbox the current call is about on the log lines it writes."""
    _sandbox.set(sandbox_id)


class JsonFormatter(logging.Formatter):
    """Formats records as JSON objects; ``runner_id`` is the process's own, if it is one."""

    def __init__(self, runner_id: str = "") -> None:
        super().__init__()
        self._runner_id = runner_id

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, without newlines inside (tracebacks go in ``exception``)."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_call_fields())
        if self._runner_id and "runner_id" not in line:
            line["runner_id"] = self._runner_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _call_fields() -> dict[str, str]:
    """The organization or runner of the call being served, and its sandbox, if any."""
    from sandboxd.controlplane.caller import Caller, RunnerCaller, bound_identity

    fields: dict[str, str] = {}
    identity = bound_identity()
    if isinstance(identity, Caller):
        fields["organization"] = identity.organization
    elif isinstance(identity, RunnerCaller):
        fields["runner_id"] = identity.runner_id
    if sandbox := _sandbox.get():
        fields["sandbox_id"] = sandbox
    return fields


def setup_logging(level: str, log_format: str = "text", runner_id: str = "") -> None:
    """Log to stderr (stdout stays for machine-readable lines) as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(runner_id))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
