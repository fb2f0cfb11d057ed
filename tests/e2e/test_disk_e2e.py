"""The disk limit of a profile, end to end: ``sandboxd up``, our client, a real sandbox.

A profile whose ``resource_ceilings.disk`` is 512Mi gives its sandboxes a writable layer of
exactly that size on disk (``backends/local/disk.py``): ``df /`` shows it, a sandbox with a
128Mi memory limit writes three times that much to a file without being OOM-killed, and
writing past the cap fails with "No space left on device" while what was written stays.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cwsandbox import ResourceOptions, Sandbox
from tests.e2e.conftest import Platform, start_platform

CONFIG = """
profiles:
  - display_name: small-disk
    description: A small disk cap, to fill in a test.
    spec:
      container_image: python:3.11
      resource_defaults: {cpu_request: 50m, memory_request: 64Mi, cpu_limit: "1",
                          memory_limit: 128Mi}
      resource_ceilings: {cpu: "2", memory: 1Gi, disk: 512Mi, pids: 512}
      network:
        egress:
          default: none
          modes:
            none: {type: none}
default_bindings:
  - profile: small-disk
    is_default: true
"""

WRITE = """
import errno, os
with open("/data/{name}", "wb") as fh:
    try:
        for _ in range({mib}):
            fh.write(b"\\0" * (1 << 20))
            fh.flush()
        print("ok")
    except OSError as exc:
        print(errno.errorcode[exc.errno])
"""


@pytest.fixture(scope="module")
def disk_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = tmp_path_factory.mktemp("disk-config") / "platform.yaml"
    config.write_text(CONFIG)
    yield from start_platform(tmp_path_factory, "--config", str(config))


def python(sandbox: Sandbox, script: str) -> str:
    result = sandbox.exec(["python3", "-c", script]).result()
    assert result.returncode == 0, result.stderr
    return str(result.stdout).strip()


def test_a_profiles_disk_cap_is_on_disk_and_ends_in_enospc(
    disk_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", disk_platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", disk_platform.api_key)
    resources = ResourceOptions(limits={"memory": "128Mi"})
    with Sandbox.run(profile_names=["small-disk"], resources=resources) as sandbox:
        df = sandbox.exec(["df", "-k", "/"]).result().stdout.splitlines()[-1].split()
        assert int(df[1]) == 512 * 1024  # df / shows the profile's disk cap
        assert sandbox.exec(["mkdir", "/data"]).result().returncode == 0
        # three times the memory limit: with a tmpfs layer this was an OOM kill (137)
        assert python(sandbox, WRITE.format(name="first", mib=384)) == "ok"
        assert python(sandbox, WRITE.format(name="second", mib=200)) == "ENOSPC"
        sizes = sandbox.exec(["stat", "-c", "%s", "/data/first"]).result().stdout
        assert int(sizes) == 384 << 20  # what was written before the cap is intact
        failed = sandbox.exec(["sh", "-c", "cat /dev/zero >/data/third"]).result()
        assert failed.returncode != 0 and "No space left on device" in failed.stderr
