"""What the runner must remember about a sandbox across its own restarts.

Why the runner keeps its own small records: the backend re-attaches to running sandboxes
after a restart (``Backend.recover``), but it knows nothing of the runner's policy: how much
of the runner's capacity the sandbox reserved (so heartbeats stay honest), when its maximum
lifetime ends (so a restart does not grant it a fresh lifetime), and where its ports were
published. One file of appended JSON records per sandbox (``<id>.jsonl``, see
``sandboxd.record_log``), removed when the sandbox is destroyed. Without a directory (tests,
ephemeral runners) records live only in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.record_log import append_record, read_record
from sandboxd.runner.resources import Reservation

__all__ = ["RecordStore", "RunnerRecord"]

_log = logging.getLogger(__name__)
LEGACY_SUFFIX = ".json"
"""Records as versions before appended records (``.jsonl``) wrote them; still read."""


@dataclass(frozen=True)
class RunnerRecord:
    """The runner's policy for one sandbox."""

    sandbox_id: str
    reservation: Reservation = field(default_factory=Reservation)
    max_lifetime_seconds: int = 0
    started_at: float = 0.0  # unix seconds; the lifetime counts from here
    service_address: str = ""
    published_ports: dict[int, int] = field(default_factory=dict)
    generation: int = 0  # of the start command, so reports after a restart carry it

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON values (the reverse of :meth:`from_dict`)."""
        r = self.reservation
        return {
            "sandbox_id": self.sandbox_id,
            "reservation": [r.cpu_millicores, r.memory_bytes, r.gpu_count],
            "max_lifetime_seconds": self.max_lifetime_seconds,
            "started_at": self.started_at,
            "service_address": self.service_address,
            "published_ports": {str(k): v for k, v in self.published_ports.items()},
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunnerRecord:
        """Build from JSON values; ``ValueError``/``KeyError``/``TypeError`` when damaged."""
        cpu, memory, gpus = (int(v) for v in data["reservation"])
        return cls(
            sandbox_id=str(data["sandbox_id"]),
            reservation=Reservation(cpu, memory, gpus),
            max_lifetime_seconds=int(data.get("max_lifetime_seconds", 0)),
            started_at=float(data.get("started_at", 0.0)),
            service_address=str(data.get("service_address", "")),
            published_ports={int(k): int(v) for k, v in data.get("published_ports", {}).items()},
            generation=int(data.get("generation", 0)),
        )


class RecordStore:
    """Records under ``directory`` (``<id>.json``), or in memory when it is ``None``."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._memory: dict[str, RunnerRecord] = {}

    def _path(self, sandbox_id: str) -> Path:
        assert self._directory is not None
        return self._directory / f"{sandbox_id}.jsonl"

    def save(self, record: RunnerRecord) -> None:
        """Append it to the sandbox's file: a crash leaves the old or the new record whole."""
        self._memory[record.sandbox_id] = record
        if self._directory is None:
            return
        path, data = self._path(record.sandbox_id), record.to_dict()
        try:
            try:  # the directory exists but for the first save: no mkdir on the create path
                append_record(path, data)
            except FileNotFoundError:
                self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                append_record(path, data)
        except OSError as exc:  # the sandbox still runs; only a later restart loses policy
            _log.warning("cannot save runner record of %s: %s", record.sandbox_id, exc)

    def get(self, sandbox_id: str) -> RunnerRecord | None:
        """The record of ``sandbox_id``, or ``None``."""
        return self._memory.get(sandbox_id)

    def remove(self, sandbox_id: str) -> None:
        """Forget ``sandbox_id`` (idempotent)."""
        self._memory.pop(sandbox_id, None)
        if self._directory is not None:
            self._path(sandbox_id).unlink(missing_ok=True)
            (self._directory / f"{sandbox_id}{LEGACY_SUFFIX}").unlink(missing_ok=True)

    def load_all(self) -> list[RunnerRecord]:
        """Read every record from disk (at start-up); damaged files are skipped and logged."""
        if self._directory is None or not self._directory.is_dir():
            return list(self._memory.values())
        # Files of older versions (<id>.json) first, so a newer <id>.jsonl wins over them.
        paths = [*self._directory.glob(f"*{LEGACY_SUFFIX}"), *self._directory.glob("*.jsonl")]
        for path in paths:
            try:  # an older .json file is one JSON line: read_record reads it as well
                record = RunnerRecord.from_dict(read_record(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.warning("ignoring damaged runner record %s: %s", path, exc)
                continue
            self._memory[record.sandbox_id] = record
        return list(self._memory.values())
