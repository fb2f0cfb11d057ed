"""Appended state records (sandboxd.record_log): the newest whole record always wins.

A process killed in the middle of a save leaves part of a line at the end of the file;
these tests write exactly that and check what a restarted runner reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType
from sandboxd.backends.local.state import LEGACY_RECORD, RECORD, SandboxRecord
from sandboxd.record_log import COMPACT_BYTES, append_record, read_record
from sandboxd.runner.records import RecordStore, RunnerRecord
from sandboxd.runner.resources import Reservation


def test_the_newest_save_wins_and_saving_again_makes_no_new_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_record(path, {"n": 1})
    inode = path.stat().st_ino
    for n in range(2, 6):
        append_record(path, {"n": n})
    assert read_record(path) == {"n": 5}
    assert path.stat().st_ino == inode  # appended in place: no new inode per save


def test_a_save_cut_short_by_a_kill_leaves_the_previous_record(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_record(path, {"state": "created", "pid": 10})
    whole = b'\n{"state": "running", "pid": 11}\n'
    with open(path, "ab") as fh:
        fh.write(whole[:17])  # what a write stopped by SIGKILL between pages leaves
    assert read_record(path) == {"state": "created", "pid": 10}
    # The next save after the restart is read whole, though it follows the torn bytes.
    append_record(path, {"state": "running", "pid": 12})
    assert read_record(path) == {"state": "running", "pid": 12}


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"torn": ', b"[1, 2]\n", b"\xff\xfe\n"])
def test_a_file_without_a_whole_record_is_damaged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="no complete record"):
        read_record(path)
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "missing.jsonl")


def test_the_file_is_rewritten_with_only_the_newest_record_past_its_limit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.jsonl"
    big = "x" * 4000
    for n in range(40):  # 160 KB of saves
        append_record(path, {"n": n, "pad": big})
        assert path.stat().st_size <= COMPACT_BYTES
    assert read_record(path) == {"n": 39, "pad": big}
    assert not (tmp_path / "r.jsonl.tmp").exists()


def test_runner_records_of_older_versions_are_read_and_newer_ones_win(tmp_path: Path) -> None:
    old = RunnerRecord("sb-a", Reservation(cpu_millicores=100), started_at=1.0)
    # as a runner before .jsonl wrote them
    (tmp_path / "sb-a.json").write_text(json.dumps(old.to_dict()))
    (tmp_path / "sb-b.json").write_text(json.dumps(RunnerRecord("sb-b", generation=1).to_dict()))
    store = RecordStore(tmp_path)
    store.save(RunnerRecord("sb-b", generation=2))  # saved by this version
    loaded = {r.sandbox_id: r for r in RecordStore(tmp_path).load_all()}
    assert loaded["sb-a"] == old
    assert loaded["sb-b"].generation == 2
    store.remove("sb-b")
    assert sorted(os.listdir(tmp_path)) == ["sb-a.json"]  # both files of sb-b are gone


def test_backend_records_of_older_versions_are_read_and_saves_go_to_the_new_file(
    tmp_path: Path,
) -> None:
    record = SandboxRecord("sb-1", tmp_path, egress=EgressType.INTERNET, keeper_pid=42)
    record.save()
    (tmp_path / RECORD).rename(tmp_path / LEGACY_RECORD)  # a state dir an older version left
    assert SandboxRecord.load(tmp_path).keeper_pid == 42
    record.keeper_pid = 43
    record.save()  # after an upgrade: record.jsonl, which wins over record.json
    loaded = SandboxRecord.load(tmp_path)
    assert (loaded.keeper_pid, loaded.egress) == (43, EgressType.INTERNET)


def test_runner_records_make_their_directory_when_it_is_missing(tmp_path: Path) -> None:
    # Saves append without asking for the directory first (one syscall less per save on
    # the create path); the first save, or one after the directory went away, makes it.
    directory = tmp_path / "state" / "records"
    store = RecordStore(directory)
    store.save(RunnerRecord("sb-1", generation=1))
    assert directory.stat().st_mode & 0o777 == 0o700
    store.save(RunnerRecord("sb-1", generation=2))
    shutil.rmtree(directory)
    store.save(RunnerRecord("sb-2", generation=3))
    loaded = {r.sandbox_id: r.generation for r in RecordStore(directory).load_all()}
    assert loaded == {"sb-2": 3}
