"""The backend catalog and the packaged conformance checks, as an out-of-tree backend uses them.

An "out-of-tree" backend is played by an installed distribution (a ``.dist-info`` directory
on ``PYTHONPATH``) whose ``sandboxd.backends`` entry point names a backend class; here that
class is the local backend under another name, so the checks really run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxd.backends import available_backend_names, build_backend, get_backend_class
from sandboxd.backends.base import BackendConfig
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore
from tests.support.processes import SANDBOXD, child_env


def plugin_dir(tmp_path: Path) -> Path:
    """A distribution registering ``local-again`` under the ``sandboxd.backends`` group."""
    site = tmp_path / "site"
    dist = site / "toy_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sandboxd.backends]\nlocal-again = sandboxd.backends.local.backend:LocalBackend\n"
    )
    return site


def sandboxd(*args: str, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env()
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [*SANDBOXD, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_an_installed_entry_point_joins_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(plugin_dir(tmp_path)))
    assert "local-again" in available_backend_names()
    assert get_backend_class("local-again") is LocalBackend
    backend = build_backend("local-again", BackendConfig(tmp_path / "data", 1000, 1 << 30))
    assert isinstance(backend, LocalBackend)
    assert backend.data_dir == tmp_path / "data" / "backend"
    with pytest.raises(KeyError, match=r"unknown backend 'nope' \(known: .*local"):
        get_backend_class("nope")


def test_backends_ls_lists_built_ins_and_entry_points(tmp_path: Path) -> None:
    done = sandboxd("backends", "ls", site=plugin_dir(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["local\tbuilt-in", "local-again\tentry point"]


def test_a_runner_refuses_an_unknown_backend_naming_the_known_ones(tmp_path: Path) -> None:
    done = sandboxd("runner", "--backend", "nope", "--control-plane", "http://127.0.0.1:1")
    assert done.returncode == 2
    assert "'nope' is not a backend; known: local, none" in done.stderr


def test_check_runs_the_packaged_checks_against_an_entry_point_backend(
    tmp_path: Path, image_store: ImageStore, busybox_rootfs: Path
) -> None:
    site = plugin_dir(tmp_path)
    images = str(image_store.data_dir)
    only = ["--only", "exec_output_and_exit_code", "--only", "files_roundtrip"]
    done = sandboxd("backends", "check", "local-again", "--images-dir", images, *only, site=site)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok   exec_output_and_exit_code (")
    assert lines[1].startswith("ok   files_roundtrip (")
    assert lines[-1] == "2 passed, 0 failed"


def test_check_refuses_bad_input_naming_the_option(tmp_path: Path, image_store: ImageStore) -> None:
    images = str(image_store.data_dir)
    unknown = sandboxd("backends", "check", "nope", "--images-dir", images)
    assert unknown.returncode == 2 and "'nope' is not a backend" in unknown.stderr
    bad_check = sandboxd("backends", "check", "local", "--images-dir", images, "--only", "fly")
    assert bad_check.returncode == 2
    assert "--only" in bad_check.stderr and "no check named fly" in bad_check.stderr
    no_image = sandboxd("backends", "check", "local", "--images-dir", str(tmp_path / "empty"))
    assert no_image.returncode == 2
    assert "--image" in no_image.stderr
    assert "sandboxd images build busybox:latest" in no_image.stderr
