"""v1 persistent volumes with the official 1.22.0 and 1.14.4 clients (protocol/v1.md §12).

A real ``sandboxd up``; the client in its own virtualenv, as a member of its own
organization: ``Volume.create`` from a ``PvcVolumeSource`` (the claim is a directory on the
runner), ``wait_until_ready``, get, list with filters, update, validate; a sandbox mounts
it and writes, the volume counts it as attached and refuses a delete while it runs; the
sandbox stops, a second one mounts the volume read-only and reads the file back, its writes
refused; the volume is deleted, and a delete of the missing one with ``allow_missing``
succeeds. Raw-gRPC checks (bad input, attacks, other organizations) are in
``test_v1_volume_attacks.py``.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Platform, run_python
from tests.support.official import OFFICIAL_V1_VERSION, official_python

pytestmark = pytest.mark.official

OFFICIAL = r"""
import json, os
from cwsandbox import Sandbox, Volume, PvcVolumeSource, RegisteredVolumeOptions as Mount
out = {}
def error_of(call):
    try:
        call()
    except Exception as e:
        return [type(e).__name__, getattr(e, "reason", None)]
    return None
runner = os.environ["RUNNER"]
pvc = PvcVolumeSource(runner_id=runner, namespace="default", claim_name="shared", sub_path="team")
vol = Volume.create("data", pvc=pvc, description="first").result()
out["created"] = [str(vol.state), vol.pvc.claim_name, vol.pvc.sub_path]
out["replayed"] = error_of(lambda: Volume.create("data", pvc=pvc).result())
vol.wait_until_ready(timeout=30).result()
got = Volume.get("data").result()
out["got"] = [str(got.state), str(got.locality), list(got.access_modes), got.description]
out["listed"] = [v.volume_id for v in Volume.list(states=["ready"], runner_ids=[runner]).result()]
out["other_runner"] = [v.volume_id for v in Volume.list(runner_ids=["elsewhere"]).result()]
out["updated"] = vol.update(description="second").result().description
out["validated"] = [str(vol.validate().result().state), vol.last_validated_at is not None]
writer = Sandbox.run(volumes=[Mount(name="data", volume_id="data", mount_path="/mnt/data")])
writer.wait()
script = "echo kept > /mnt/data/note && id -u && stat -c %u /mnt/data/note"
out["write"] = writer.exec(["sh", "-c", script]).result().stdout.split()
out["attached"] = Volume.get("data").result().attached_sandbox_count
out["in_use"] = error_of(lambda: Volume.get("data").result().delete().result())
writer.stop().result()
reader = Sandbox.run(volumes=[Mount(name="v", volume_id="data", mount_path="/read",
                                    read_only=True)])
reader.wait()
out["read"] = reader.exec(["cat", "/read/note"]).result().stdout
out["read_only"] = reader.exec(["sh", "-c", "echo x > /read/new"]).result().returncode
reader.stop().result()
out["deleted"] = str(vol.delete().result().state)
out["gone"] = error_of(lambda: Volume.get("data").result())
out["delete_missing"] = error_of(lambda: vol.delete(allow_missing=True).result())
print(json.dumps(out, default=str))
"""


# 1.11.0 is the first release whose Volume API calls VolumeService (v1.md §14); 0.27.0 has
# no Volume API at all.
VOLUME_CLIENTS = (OFFICIAL_V1_VERSION, "1.14.4")


@pytest.mark.parametrize("version", VOLUME_CLIENTS)
def test_official_client_volume_lifecycle_and_data_across_sandboxes(
    platform: Platform, version: str
) -> None:
    python = official_python(version)
    org = f"vol-life-{version.replace('.', '-')}"
    env = platform.env(CWSANDBOX_API_KEY=platform.member_key(org), RUNNER=platform.runner_id)
    result = json.loads(run_python(python, OFFICIAL, env).strip().splitlines()[-1])
    assert result["created"] == ["validating", "shared", "team"]
    assert result["replayed"] is not None  # the same id again (a new request id): refused
    state, locality, modes, description = result["got"]
    assert (state, locality, modes, description) == (
        "ready",
        "cluster_local",
        ["ReadWriteMany"],
        "first",
    )
    assert result["listed"] == ["data"] and result["other_runner"] == []
    assert result["updated"] == "second"
    assert result["validated"] == ["ready", True]
    assert result["write"] == ["0", "0"]  # the sandbox's root owns what it wrote
    assert result["attached"] == 1
    assert result["in_use"] == ["VolumeInUseError", "CWSANDBOX_VOLUME_IN_USE"]
    assert result["read"] == "kept\n"
    assert result["read_only"] != 0
    assert result["deleted"] == "deleting"
    assert result["gone"] == ["VolumeNotFoundError", "CWSANDBOX_VOLUME_NOT_FOUND"]
    assert result["delete_missing"] is None
