"""Runner identity: explicit id, persisted id, generated id written atomically."""

from __future__ import annotations

import re

from sandboxd.runner.identity import RUNNER_ID_FILE, generate_runner_id, resolve_runner_id


def test_explicit_id_wins_and_is_not_persisted(tmp_path):
    assert resolve_runner_id("  my-runner ", tmp_path) == "my-runner"
    assert not (tmp_path / RUNNER_ID_FILE).exists()


def test_generated_id_is_persisted_and_reused(tmp_path):
    state_dir = tmp_path / "deep" / "state"
    first = resolve_runner_id(None, state_dir, hostname="gpu-node-01.example.com")
    assert re.fullmatch(r"runner-gpu-node-01-[0-9a-f]{6}", first)
    assert (state_dir / RUNNER_ID_FILE).read_text() == first + "\n"
    assert resolve_runner_id(None, state_dir) == first
    assert resolve_runner_id("", state_dir) == first
    # No temporary files are left behind by the atomic write.
    assert [p.name for p in state_dir.iterdir()] == [RUNNER_ID_FILE]


def test_existing_file_is_read_as_is(tmp_path):
    (tmp_path / RUNNER_ID_FILE).write_text("runner-kept-abc123\n\n")
    assert resolve_runner_id(None, tmp_path) == "runner-kept-abc123"


def test_empty_file_is_replaced_with_a_new_id(tmp_path):
    (tmp_path / RUNNER_ID_FILE).write_text("\n")
    runner_id = resolve_runner_id(None, tmp_path, hostname="h")
    assert runner_id.startswith("runner-h-")
    assert (tmp_path / RUNNER_ID_FILE).read_text().strip() == runner_id


def test_generated_ids_are_sanitised_and_distinct():
    assert re.fullmatch(r"runner-my-host-[0-9a-f]{6}", generate_runner_id("My_Host"))
    assert re.fullmatch(r"runner-host-[0-9a-f]{6}", generate_runner_id("___"))
    assert len({generate_runner_id("h") for _ in range(20)}) > 1
    long_name = generate_runner_id("x" * 100)
    assert len(long_name) <= len("runner-") + 40 + 7
