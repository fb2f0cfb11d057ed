"""The official ``cwsandbox==0.26.2`` client and ours see the same discovery results.

The official client runs in its own virtualenv (created by the ``official`` fixture from PyPI);
one script, using only the public API both clients share, runs under each interpreter against
the same ``sandboxd up`` and prints JSON that must match.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import OUR_PYTHON, Platform, run_python

SCRIPT = r"""
import dataclasses, json, cwsandbox

# The fields of RunnerResources both clients have (ours adds sandboxd's capacity extension:
# allocatable, requested, overcommit ratios; the official client skips those wire fields).
PUBLIC_RESOURCES = ("available_cpu_millicores", "available_memory_bytes",
                    "available_gpu_count", "running_sandboxes")

def runner(r):
    d = dataclasses.asdict(r)
    d["connected_at"] = r.connected_at.isoformat()
    if d["resources"] is not None:
        d["resources"] = {k: d["resources"][k] for k in PUBLIC_RESOURCES}
    return d

def profile(p):
    return {
        "profile_name": p.profile_name, "runner_id": p.runner_id,
        "gpu": list(p.supported_gpu_types), "arch": list(p.supported_architectures),
        "ingress": [m.name for m in p.service_exposure_modes],
        "egress": [m.name for m in p.egress_modes],
    }

def error_of(call):
    try:
        call()
    except cwsandbox.CWSandboxError as e:
        return [type(e).__name__, getattr(e, "runner_id", None), getattr(e, "profile_name", None)]
    return None

out = {
    "runners": [runner(r) for r in cwsandbox.list_runners()],
    "runners_full": [runner(r) for r in cwsandbox.list_runners(include_resources=True)],
    "runners_capacity": [
        r.runner_id for r in cwsandbox.list_runners(min_available_cpu_millicores=1)
    ],
    "runners_too_big": [r.runner_id for r in cwsandbox.list_runners(min_available_gpu_count=1)],
    "runners_egress_none": [r.runner_id for r in cwsandbox.list_runners(egress_mode="none")],
    "runners_group": [r.runner_id for r in cwsandbox.list_runners(runner_group_id="default")],
    "runners_other_group": [r.runner_id for r in cwsandbox.list_runners(runner_group_id="x")],
    "runners_profile": [r.runner_id for r in cwsandbox.list_runners(profile_name="locked-down")],
    "get_runner": runner(cwsandbox.get_runner("runner-abc-123")),
    "profiles": [profile(p) for p in cwsandbox.list_profiles()],
    "profiles_public": [
        profile(p) for p in cwsandbox.list_profiles(service_exposure_mode="public")
    ],
    "profiles_arch": [profile(p) for p in cwsandbox.list_profiles(architecture="amd64")],
    "profiles_runner": [profile(p) for p in cwsandbox.list_profiles(runner_id="runner-abc-123")],
    "get_profile": profile(cwsandbox.get_profile("locked-down")),
    "get_profile_on_runner": profile(cwsandbox.get_profile("default", runner_id="runner-abc-123")),
    "runner_missing": error_of(lambda: cwsandbox.get_runner("ghost")),
    "profile_missing": error_of(lambda: cwsandbox.get_profile("ghost")),
    "profile_wrong_runner": error_of(lambda: cwsandbox.get_profile("default", runner_id="ghost")),
}
print(json.dumps(out, sort_keys=True))
"""


def test_official_and_our_client_agree(quiet_platform: Platform, official: Path) -> None:
    theirs = json.loads(run_python(official, SCRIPT, quiet_platform.env()))
    ours = json.loads(run_python(OUR_PYTHON, SCRIPT, quiet_platform.env()))
    assert theirs == ours
    # And what they agree on is right.
    assert [r["runner_id"] for r in theirs["runners"]] == [quiet_platform.runner_id]
    assert theirs["runners"][0]["resources"] is None
    assert theirs["runners_full"][0]["resources"]["running_sandboxes"] == 0
    assert theirs["runners_capacity"] == [quiet_platform.runner_id]
    assert theirs["runners_too_big"] == []
    assert theirs["runners_egress_none"] == [quiet_platform.runner_id]
    assert theirs["runners_group"] == [quiet_platform.runner_id]
    assert theirs["runners_other_group"] == []
    assert [p["profile_name"] for p in theirs["profiles"]] == ["default", "locked-down"]
    assert [p["profile_name"] for p in theirs["profiles_public"]] == ["default"]
    assert theirs["get_profile"]["egress"] == ["none"]
    assert theirs["runner_missing"] == ["RunnerNotFoundError", "ghost", None]
    assert theirs["profile_missing"] == ["ProfileNotFoundError", None, "ghost"]
    assert theirs["profile_wrong_runner"][0] == "ProfileNotFoundError"
