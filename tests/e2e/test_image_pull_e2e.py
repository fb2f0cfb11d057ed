"""``sandboxd images pull|ls|rm`` against a real registry on loopback.

Debian's ``docker-registry`` serves on a free loopback port with htpasswd authentication; the
test pushes an image it made (the busybox image plus a marker file) with skopeo. Then:
without credentials, or with a credentials file others can read, the pull is refused; with
them it lands in the store with its size; a sandbox runs from it on ``sandboxd up``; ``rm``
refuses while that sandbox lives and removes the image once it is gone.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwsandbox import Sandbox
from sandboxd.images import ImageStore
from sandboxd.images.build import build_image
from tests.support.faults import wait_until
from tests.support.ports import free_port
from tests.support.processes import SANDBOXD, Proc, all_in_one, child_env

USER, PASSWORD = "tester", "s3cret-pw"
MARKER = "pulled from the test registry\n"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("skopeo", "umoci", "docker-registry", "htpasswd")),
    reason="needs skopeo, umoci, docker-registry, apache2-utils (scripts/setup.sh installs them)",
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a registry that wants USER/PASSWORD, holding ``test/tiny:v1``."""
    root = tmp_path_factory.mktemp("registry")
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (root / "htpasswd").write_text(htpasswd)
    address = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: {address}}}\n"
        f"auth: {{htpasswd: {{realm: test, path: {root / 'htpasswd'}}}}}\n"
    )
    server = Proc(["docker-registry", "serve", str(root / "config.yml")], child_env()).start()
    try:
        server.wait_for_line("", timeout=10)
        push_tiny_image(root, address)
        yield address
    finally:
        server.stop()


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


def push_tiny_image(root: Path, address: str) -> None:
    """busybox + a marker file, as an OCI image pushed to ``address`` (with credentials)."""
    store = ImageStore(root / "build")
    busybox = build_image(store, "busybox:latest", progress=lambda _line: None).rootfs
    layout, bundle = root / "layout", root / "bundle"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:v1")
    run("umoci", "unpack", "--image", f"{layout}:v1", str(bundle))
    run("cp", "-a", f"{busybox}/.", str(bundle / "rootfs"))
    (bundle / "rootfs" / "marker.txt").write_text(MARKER)
    run("umoci", "repack", "--image", f"{layout}:v1", str(bundle))

    def pushed() -> bool:
        done = subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}",
             f"oci:{layout}:v1", f"docker://{address}/test/tiny:v1"],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        return done.returncode == 0

    wait_until("the test image pushed", pushed, 60, interval=0.5)


def authfile(path: Path, address: str, password: str = PASSWORD, mode: int = 0o600) -> Path:
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {address: {"auth": token}}}))
    path.chmod(mode)
    return path


def images(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SANDBOXD, "images", "--data-dir", str(data_dir), *argv],
        capture_output=True, text=True, check=False, timeout=300, env=child_env(),
    )  # fmt: skip


def test_pull_needs_credentials_kept_private(registry: str, tmp_path: Path) -> None:
    ref = f"{registry}/test/tiny:v1"
    refused = images(tmp_path / "data", "pull", ref, "--no-tls-verify")
    assert refused.returncode == 1
    assert "unauthorized" in refused.stderr.lower() or "authentication" in refused.stderr.lower()
    wrong = images(
        tmp_path / "data", "pull", ref, "--no-tls-verify",
        "--authfile", str(authfile(tmp_path / "wrong.json", registry, password="nope")),
    )  # fmt: skip
    assert wrong.returncode == 1, wrong
    loose = authfile(tmp_path / "loose.json", registry, mode=0o644)
    exposed = images(tmp_path / "data", "pull", ref, "--no-tls-verify", "--authfile", str(loose))
    assert exposed.returncode == 1 and "chmod 600" in exposed.stderr
    missing = images(
        tmp_path / "data", "pull", f"{registry}/test/none:v9", "--no-tls-verify",
        "--authfile", str(authfile(tmp_path / "auth.json", registry)),
    )  # fmt: skip
    assert missing.returncode == 1
    # Nothing half-pulled is left in the store.
    assert images(tmp_path / "data", "ls").stdout.startswith("no images")


def test_pull_run_and_remove(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    ref = f"{registry}/test/tiny:v1"
    auth = authfile(tmp_path / "auth.json", registry)
    pulled = images(data, "pull", ref, "--no-tls-verify", "--authfile", str(auth))
    assert pulled.returncode == 0, pulled.stderr
    assert f"{ref} pulled" in pulled.stdout and "Copying blob" in pulled.stderr
    config = tmp_path / "platform.yaml"
    config.write_text(
        "profiles:\n  - display_name: tiny\n    spec:\n"
        f"      container_image: {ref}\n"
        "      network: {egress: {default: none, modes: {none: {type: none}}}}\n"
        "default_bindings:\n  - {profile: tiny, is_default: true}\n"
    )
    listed = images(data, "ls", "--config", str(config)).stdout.splitlines()
    row = next(line for line in listed if line.startswith(ref))
    assert row.split()[-1] == "tiny" and "MiB" in row, listed  # size, and the profile using it

    with all_in_one(data, "--config", str(config)) as up:
        monkeypatch.setenv("CWSANDBOX_BASE_URL", up.base_url)
        monkeypatch.setenv("CWSANDBOX_API_KEY", up.api_key)
        sandbox = Sandbox.run("/bin/sleep", "3600", container_image=ref)
        try:
            sandbox.wait()
            marker = sandbox.exec(["/bin/cat", "/marker.txt"]).result()
            assert marker.stdout == MARKER
            busy = images(data, "rm", ref)
            assert busy.returncode == 1 and sandbox.sandbox_id in busy.stderr, busy
        finally:
            sandbox.stop().result()
        wait_until("the image free to remove", lambda: images(data, "rm", ref).returncode == 0, 30)
    assert ref not in images(data, "ls").stdout
