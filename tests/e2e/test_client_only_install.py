"""``pip install sandboxd`` gives the client and its CLI with light dependencies only.

A fresh virtualenv gets this checkout installed without extras (built from a copy, so the
build never touches the working tree). It must hold the client, its CLI and the protocol
package and none of the server's packages; that client must drive a real ``sandboxd up``
(which runs from the full environment) through the guide's basic calls; and the ``sandboxd``
command there must say which extra to install instead of ending in a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.launcher import SERVER_MODULES
from tests.support.processes import Up, all_in_one

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = """
import importlib.util, sys
from cwsandbox import Sandbox
import sandboxd_protocol.v1, sandboxd_protocol.v1beta2, sandboxd_protocol.sandboxd_v1
server = sorted(m for m in sys.argv[1].split(",") if importlib.util.find_spec(m) is not None)
print("server modules:", server)
with Sandbox.run() as sandbox:
    print(sandbox.exec(["echo", "hello from the light client"]).result().stdout.strip())
"""


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with ``pip install <this checkout>`` (no extras); its bin directory."""
    work = tmp_path_factory.mktemp("light-install")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    home = work / "venv"
    venv.create(home, with_pip=True)
    subprocess.run(
        [str(home / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(source)],
        check=True, timeout=900,
    )  # fmt: skip
    return home / "bin"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with all_in_one(tmp_path_factory.mktemp("light-up")) as platform:
        yield platform


def test_the_client_alone_has_no_server_packages_and_drives_the_platform(
    light: Path, up: Up
) -> None:
    env = {**os.environ, "CWSANDBOX_BASE_URL": up.base_url, "CWSANDBOX_API_KEY": up.api_key}
    done = subprocess.run(
        [str(light / "python"), "-c", CLIENT_SCRIPT, ",".join(sorted(SERVER_MODULES))],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["server modules: []", "hello from the light client"]
    listed = subprocess.run(
        [str(light / "cwsandbox"), "ls", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr


def test_sandboxd_in_a_client_only_install_names_the_server_extra(light: Path) -> None:
    done = subprocess.run(
        [str(light / "sandboxd"), "up"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "pip install 'sandboxd[server]'" in done.stderr
    assert "Traceback" not in done.stderr
