"""A local journal of trail events not yet in the database, so a SIGKILL loses none.

Why: the activity trail batches its database writes (``events.py``, every 0.1 s), so a
control plane killed between an exec's answer and the next batch would forget that exec.
Each event is appended here as one JSON line (one ``write`` to a file opened with
``O_APPEND``; a killed process loses nothing the kernel has, only a lost host would) the
moment it is complete, numbered in trail order (``j``). The database keeps the highest
number it has stored, in the same transaction as the events; at start-up the lines above
it are stored first, in order. The file is emptied whenever everything in it is stored,
and rewritten with only what is not stored once it grows past :data:`COMPACT_BYTES`.

A line cut short by a kill in the middle of its ``write`` is skipped with a warning: its
event had not been answered yet (the line is written before anything waits on it).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

from sandboxd.store.event_store import SandboxEvent

__all__ = ["EventJournal"]

log = logging.getLogger(__name__)

COMPACT_BYTES = 8 << 20


class EventJournal:
    """Append-only JSON lines of numbered events; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0

    def open(self) -> None:
        """Open (creating, mode 0600) for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        """Close the file (its content stays for the next start)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, number: int, event: SandboxEvent) -> None:
        """Append one complete event; never raises (a full disk is logged, not fatal)."""
        if self._fd is None:
            return
        line = json.dumps(
            {
                "j": number,
                "sandbox_id": event.sandbox_id,
                "owner_org": event.owner_org,
                "at": event.at.isoformat(),
                "kind": event.kind,
                "actor": event.actor,
                "data": event.data,
            },
            separators=(",", ":"),
            default=str,
        ).encode()
        try:
            self._size += os.write(self._fd, line + b"\n")
        except OSError as error:
            log.warning("event journal: cannot append (%s); the event is only in memory", error)

    def read(self) -> list[tuple[int, SandboxEvent]]:
        """Every whole line, in number order (cut or damaged lines are skipped)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        found: dict[int, SandboxEvent] = {}
        for line in raw.splitlines():
            try:
                item = json.loads(line)
                found[int(item["j"])] = SandboxEvent(
                    sandbox_id=str(item["sandbox_id"]),
                    owner_org=str(item["owner_org"]),
                    at=datetime.fromisoformat(item["at"]),
                    kind=str(item["kind"]),
                    actor=str(item["actor"]),
                    data=dict(item["data"]),
                )
            except (ValueError, KeyError, TypeError):
                log.warning("event journal: skipped a damaged line (%d bytes)", len(line))
        return sorted(found.items())

    def stored_through(self, number: int, everything: bool) -> None:
        """The database holds every event up to ``number``: drop what it made redundant.

        ``everything``: nothing newer is waiting, so the file is emptied. Otherwise it is
        rewritten with the newer lines only once it has grown past :data:`COMPACT_BYTES`.
        """
        if self._fd is None:
            return
        if everything:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return
        if self._size < COMPACT_BYTES:
            return
        keep = [(j, e) for j, e in self.read() if j > number]
        # Written aside and renamed over the journal in one step: a kill at any point
        # leaves the old file or the new one whole. Nothing appends meanwhile (one loop).
        fresh = self.path.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = os.open(fresh, flags, 0o600)
        old, self._fd, self._size = self._fd, fd, 0
        for j, event in keep:
            self.write(j, event)
        os.replace(fresh, self.path)
        os.close(old)
