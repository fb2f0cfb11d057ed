"""The trail's local journal: numbered lines, cut lines skipped, compaction keeps the rest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sandboxd.controlplane import event_journal
from sandboxd.controlplane.event_journal import EventJournal
from sandboxd.store.event_store import SandboxEvent


def event(i: int) -> SandboxEvent:
    at = datetime(2026, 12, 2, 12, 0, i, tzinfo=UTC)
    return SandboxEvent("sb-1", "team-a", at, "exec", "api-key:k", {"argv": ["echo", str(i)]})


def test_lines_come_back_in_number_order_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.journal")
    journal.open()
    for number in (3, 1, 2):  # a digest finished late: its line comes after later ones
        journal.write(number, event(number))
    journal.close()
    with (tmp_path / "events.journal").open("ab") as fh:
        fh.write(b'{"j":4,"sandbox_id":"sb-1","owner_org":"team-a","at":"2026-12-')  # a kill
    read = EventJournal(tmp_path / "events.journal").read()
    assert [n for n, _ in read] == [1, 2, 3]
    assert read[0][1] == event(1)
    assert oct((tmp_path / "events.journal").stat().st_mode & 0o777) == "0o600"


def test_stored_events_are_dropped_and_the_rest_kept(tmp_path: Path, monkeypatch: object) -> None:
    path = tmp_path / "events.journal"
    journal = EventJournal(path)
    journal.open()
    for number in range(1, 6):
        journal.write(number, event(number))
    journal.stored_through(2, everything=False)  # small: left as it is
    assert [n for n, _ in journal.read()] == [1, 2, 3, 4, 5]
    event_journal.COMPACT_BYTES = 1  # type: ignore[misc]  # force the rewrite
    try:
        journal.stored_through(3, everything=False)
    finally:
        event_journal.COMPACT_BYTES = 8 << 20  # type: ignore[misc]
    assert [n for n, _ in journal.read()] == [4, 5]
    journal.write(6, event(6))  # appending goes on in the rewritten file
    assert [n for n, _ in journal.read()] == [4, 5, 6]
    journal.stored_through(6, everything=True)
    assert path.read_bytes() == b""
    assert not path.with_suffix(".tmp").exists()
