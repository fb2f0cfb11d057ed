"""v1 persistent volumes over raw gRPC: bad input, attacks, other organizations.

What no client would send, against a real ``sandboxd up``: malformed volumes and mounts
are INVALID_ARGUMENT naming their field (a claim or sub-path that climbs, a mount over
``/proc``, a mask path other than ``spec.description``); a symlink that one sandbox plants
in the volume is refused when the next create's ``sub_path`` walks through it, naming the
mount's ``sub_path``, and nothing outside the volume is reached; a pin to another runner is
a placement conflict. Another organization sees the volume exactly as a missing one on
every VolumeService RPC and when mounting it, and its own volume of the same claim name is
a different directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandboxd_protocol.v1 import sandbox_pb2 as v
from sandboxd_protocol.v1 import volume_pb2 as p
from tests.e2e.conftest import Platform
from tests.support.processes import keyed_channel
from tests.support.v1_calls import (
    SANDBOXES,
    SLEEP,
    VOLUMES,
    answer,
    attempt,
    create_request,
    rpc,
    wait_state,
)

M = "spec.containers[0].volume_mounts[0]"


@dataclass
class Org:
    channel: grpc.Channel
    runner_id: str


def volume(volume_id: str = "vx7", claim: str = "attacks", **pvc: Any) -> p.CreateVolumeRequest:
    source = {"runner_id": "", "namespace": "default", "claim_name": claim, **pvc}
    return p.CreateVolumeRequest(
        volume=p.Volume(volume_id=volume_id, spec=p.VolumeSpec(pvc=p.PvcVolumeSource(**source)))
    )


def ready(org: Org, volume_id: str, claim: str) -> None:
    request = volume(volume_id, claim, runner_id=org.runner_id)
    rpc(org.channel, "CreateVolume", request)
    for _ in range(200):
        got = rpc(org.channel, "GetVolume", p.GetVolumeRequest(volume_id=volume_id))
        if got.status.state == p.VOLUME_STATE_READY:
            return
        assert got.status.state == p.VOLUME_STATE_VALIDATING, got.status.state_reason
        time.sleep(0.05)
    raise AssertionError("the volume never became ready")


def mounting(volume_id: str = "vx7", path: str = "/data", **mount: Any) -> v.CreateSandboxRequest:
    request = create_request(volumes=[v.SandboxVolume(name="d", volume_id=volume_id)])
    request.sandbox.spec.containers[0].volume_mounts.append(
        v.VolumeMount(volume="d", mount_path=path, **mount)
    )
    return request


@pytest.fixture(scope="module")
def orgs(platform: Platform) -> Iterator[tuple[Org, Org]]:
    a = keyed_channel(platform.target, platform.member_key("vol-atk-a"))
    b = keyed_channel(platform.target, platform.member_key("vol-atk-b"))
    with a, b:
        first, second = Org(a, platform.runner_id), Org(b, platform.runner_id)
        ready(first, "vx7", "attacks")
        yield first, second


def refused(org: Org, method: str, request: Any, volume_id: str = "\x00") -> tuple[Any, ...]:
    """(code, message, reason, metadata, fields) of a refused call, ``volume_id`` redacted."""
    service = SANDBOXES if method in SANDBOXES.methods_by_name else VOLUMES
    return answer(attempt(org.channel, service.methods_by_name[method], request), volume_id)


BAD_VOLUMES = {
    "volume.volume_id": volume("../x"),
    "volume.spec.pvc.claim_name": volume(claim="../etc"),
    "volume.spec.pvc.sub_path": volume(sub_path="../../etc"),
    "volume.spec.pvc.namespace": volume(namespace="a/b"),
    "volume.spec.pvc.runner_id": volume(),
    "volume.spec.pvc": p.CreateVolumeRequest(volume=p.Volume(volume_id="x")),
}


@pytest.mark.parametrize("field", sorted(BAD_VOLUMES))
def test_malformed_volumes_name_their_field(orgs: tuple[Org, Org], field: str) -> None:
    request = BAD_VOLUMES[field]
    if field != "volume.spec.pvc.runner_id" and request.volume.spec.HasField("pvc"):
        request.volume.spec.pvc.runner_id = orgs[0].runner_id
    code, _message, reason, _meta, fields = refused(orgs[0], "CreateVolume", request)
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CWSANDBOX_INVALID_ARGUMENT",
        [field],
    )


def test_unknown_runners_foreign_mask_paths_and_other_pins_are_refused(
    orgs: tuple[Org, Org],
) -> None:
    a = orgs[0]
    code, message, reason, meta, _ = refused(a, "CreateVolume", volume("x", runner_id="nope"))
    assert (code, reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CWSANDBOX_VOLUME_RUNNER_INELIGIBLE",
    )
    assert "runner_id" in message and meta == {"volume_id": "x"}
    mask = p.UpdateVolumeRequest(volume_id="vx7", volume=p.Volume())
    mask.update_mask.paths.extend(["spec.description", "spec.pvc.claim_name"])
    code, _m, _r, _meta, fields = refused(a, "UpdateVolume", mask)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask.paths[1]"])
    pinned = mounting()
    pinned.sandbox.spec.runner_ids.append("another-runner")
    code, _m, reason, meta, _f = refused(a, "CreateSandbox", pinned)
    conflict = (grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_VOLUME_PLACEMENT_CONFLICT")
    assert (code, reason) == conflict and meta == {"volume_id": "vx7"}


ATTACKS = {
    f"{M}.mount_path": [
        mounting(path="/proc/sys"),
        mounting(path="/a/../proc"),
        mounting(path="/"),
    ],
    f"{M}.sub_path": [mounting(sub_path="../../etc"), mounting(sub_path="/etc")],
}


@pytest.mark.parametrize("field", sorted(ATTACKS))
def test_mounts_that_climb_are_refused_naming_the_field(orgs: tuple[Org, Org], field: str) -> None:
    for request in ATTACKS[field]:
        code, _m, _r, _meta, fields = refused(orgs[0], "CreateSandbox", request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


PLANT = "ln -s /etc /data/esc && ln -s ../../../../../.. /data/up && touch /data/planted"


def test_a_planted_symlink_is_refused_when_a_sub_path_walks_through_it(
    orgs: tuple[Org, Org],
) -> None:
    a = orgs[0]
    request = mounting()
    request.sandbox.spec.containers[0].args[1] = f"{PLANT}; {SLEEP[2]}"
    planter = str(rpc(a.channel, "CreateSandbox", request).sandbox_id)
    wait_state(a.channel, planter, [v.STATE_RUNNING])
    planted = v.ReadFileRequest(sandbox_id=planter, path="/data/planted")
    for _ in range(100):
        if not isinstance(
            attempt(a.channel, SANDBOXES.methods_by_name["ReadFile"], planted), grpc.RpcError
        ):
            break
        time.sleep(0.05)
    listed = rpc(a.channel, "ListSandboxes", v.ListSandboxesRequest(volume_ids=["vx7"]))
    assert [s.sandbox_id for s in listed.sandboxes] == [planter]
    assert list(listed.sandboxes[0].status.attached_volume_ids) == ["vx7"]
    other = rpc(a.channel, "ListSandboxes", v.ListSandboxesRequest(volume_ids=["nope"]))
    assert list(other.sandboxes) == []
    code, _m, reason, _meta, _f = refused(a, "DeleteVolume", p.DeleteVolumeRequest(volume_id="vx7"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_VOLUME_IN_USE")
    rpc(a.channel, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=planter))
    for sub_path in ("esc", "esc/pwned-by-volume", "up/etc"):
        code, _m, _r, _meta, fields = refused(a, "CreateSandbox", mounting(sub_path=sub_path))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [f"{M}.sub_path"]), sub_path
    assert not Path("/etc/pwned-by-volume").exists()
    fresh = rpc(a.channel, "CreateSandbox", mounting(sub_path="fresh/dir"))  # made on the runner
    rpc(a.channel, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=fresh.sandbox_id))


def test_another_organization_sees_a_missing_volume(orgs: tuple[Org, Org]) -> None:
    a, b = orgs
    calls = {
        "GetVolume": lambda vid: p.GetVolumeRequest(volume_id=vid),
        "ValidateVolume": lambda vid: p.ValidateVolumeRequest(volume_id=vid),
        "DeleteVolume": lambda vid: p.DeleteVolumeRequest(volume_id=vid, force=True),
        "UpdateVolume": lambda vid: p.UpdateVolumeRequest(volume_id=vid, volume=p.Volume()),
    }
    for method, make in calls.items():
        foreign = refused(b, method, make("vx7"), "vx7")
        assert foreign[0] is grpc.StatusCode.NOT_FOUND, method
        assert refused(b, method, make("never"), "never") == foreign, method
    assert list(rpc(b.channel, "ListVolumes", p.ListVolumesRequest()).volumes) == []
    code, _m, reason, _meta, _f = refused(b, "CreateSandbox", mounting())
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CWSANDBOX_VOLUME_NOT_FOUND")
    got = rpc(a.channel, "GetVolume", p.GetVolumeRequest(volume_id="vx7"))
    assert got.status.state == p.VOLUME_STATE_READY  # untouched by the other's calls


def test_the_same_claim_in_another_organization_is_another_directory(
    orgs: tuple[Org, Org],
) -> None:
    a, b = orgs
    writer = str(rpc(a.channel, "CreateSandbox", mounting()).sandbox_id)
    wait_state(a.channel, writer, [v.STATE_RUNNING])
    secret = v.WriteFileRequest(sandbox_id=writer, path="/data/a-only", content=b"a")
    rpc(a.channel, "WriteFile", secret)
    rpc(a.channel, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=writer))
    ready(b, "vx7", "attacks")  # b's own volume: same id, same claim name, same runner
    reader = str(rpc(b.channel, "CreateSandbox", mounting()).sandbox_id)
    wait_state(b.channel, reader, [v.STATE_RUNNING])
    read = v.ReadFileRequest(sandbox_id=reader, path="/data/a-only")
    _code, _m, reason, _meta, _f = refused(b, "ReadFile", read)
    assert reason == "CWSANDBOX_FILE_NOT_FOUND"
    rpc(b.channel, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=reader))
    rpc(b.channel, "DeleteVolume", p.DeleteVolumeRequest(volume_id="vx7", force=True))
