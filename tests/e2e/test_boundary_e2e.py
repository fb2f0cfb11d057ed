"""The security review's host-file attacks, replayed through the whole platform.

Client → control plane → runner → backend: each call below is one the review made with a
stock client, and each used to read or write the host as root. They must fail with a
file or exec error, and the host must be unchanged. The backend suite
(``tests/backends/test_local_boundary.py``) covers the variants in depth.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwsandbox import Sandbox, SandboxDefaults
from cwsandbox.exceptions import SandboxError
from tests.e2e.conftest import Platform

CLIMB = "/proc/self/fd/3" + "/.." * 12


@pytest.fixture
def defaults(platform: Platform) -> SandboxDefaults:
    return SandboxDefaults(base_url=platform.base_url, tags=("boundary-e2e",))


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    yield tmp_path
    assert secret.read_text() == "host secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"], "the host was written"


def test_read_and_write_through_a_leaked_descriptor_fail(
    defaults: SandboxDefaults, host_dir: Path
) -> None:
    with Sandbox.run(defaults=defaults) as sandbox:
        for path in (f"{CLIMB}/etc/shadow", f"{CLIMB}{host_dir}/secret", "/proc/self/exe"):
            with pytest.raises(SandboxError):
                sandbox.read_file(path).result()
        with pytest.raises(SandboxError):
            sandbox.write_file(f"{CLIMB}{host_dir}/planted", b"root was here").result()
        # a symlink planted inside turns the next ordinary call into... nothing outside
        sandbox.exec(["ln", "-s", "/proc/self/fd/3/../../..", "/tmp/out"]).result()
        with pytest.raises(SandboxError):
            sandbox.read_file(f"/tmp/out{host_dir}/secret").result()
        with pytest.raises(SandboxError):
            sandbox.write_file(f"/tmp/out{host_dir}/planted", b"x").result()


def test_exec_of_a_host_binary_fails(defaults: SandboxDefaults, host_dir: Path) -> None:
    interpreter = Path(os.path.realpath(sys.executable))
    before = interpreter.read_bytes()
    with Sandbox.run(defaults=defaults) as sandbox:
        result = sandbox.exec([f"{CLIMB}/usr/bin/cat", f"{host_dir}/secret"]).result()
        assert result.returncode in (126, 127) and "host secret" not in result.stdout
        # the shell the next exec resolves, pointed at a host binary: refused, not run
        sandbox.exec(["ln", "-sf", f"{CLIMB}{interpreter}", "/usr/bin/sh"]).result()
        result = sandbox.exec(["sh", "-c", "echo ran"]).result()
        assert result.returncode in (126, 127), (result.stdout, result.stderr)
    assert interpreter.read_bytes() == before
