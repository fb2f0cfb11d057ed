"""A starting sandbox's request as stored with its record (``held_requests.py``).

Why: a start moved after a control-plane restart is placed and built again from the stored
copy alone; a field lost on the way would change what runs, or where.
"""

from __future__ import annotations

import dataclasses

from sandboxd.controlplane.held_requests import FORMAT, decode_request, encode_request
from sandboxd.controlplane.secret_refs import SecretUse
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.controlplane.written_quantities import WrittenQuantities
from sandboxd.snapshots.scratch_request import ScratchRequest
from sandboxd.store.secret_store import SecretKey
from sandboxd.volumes.model import VolumeMountPlan

FULL = SandboxRequest(
    command=("python", "-c", "print('héllo')"),
    image="python:3.11",
    environment={"A": "1", "EMPTY": "", "UNICODE": "ü"},
    tags=("t1", "t2"),
    profile_names=("default", "gpu"),
    runner_ids=("r-1", "r-2"),
    cpu_limit=2000,
    cpu_request=500,
    memory_limit=2 << 30,
    memory_request=None,
    gpu_count=1,
    gpu_type="A100",
    egress_mode="internet",
    ingress_mode="none",
    exposed_ports=(8080, 9090),
    mounted_files=(("/etc/x", b"secret bytes"),),
    max_lifetime_seconds=3600,
    secrets=(
        SecretUse(SecretKey("vault", "db", "password"), "DB_PASSWORD", "s[0].m[0]", "s[0].n"),
    ),
    written=WrittenQuantities(cpu={2000: "2", 500: "500m"}, memory={2 << 30: "2Gi"}),
    egress_type="allowlist",
    egress_cidrs=("10.0.0.0/8",),
    ingress_type="tunnel",
    scratch=ScratchRequest("/work", size_bytes=1 << 30, restore_snapshot_id="snap-1"),
)


def test_every_field_comes_back_but_the_mounted_files() -> None:
    for field in dataclasses.fields(SandboxRequest):  # a field added later is covered here
        if field.name != "volumes" and field.default is not dataclasses.MISSING:
            assert getattr(FULL, field.name) != field.default, f"set {field.name} in FULL"
    raw = encode_request(FULL)
    assert raw is not None
    assert b"secret bytes" not in raw  # the stored spec keeps mounted files, once
    assert decode_request(raw) == dataclasses.replace(FULL, mounted_files=())


def test_a_request_with_volumes_is_not_stored() -> None:
    """Its volumes pin it to their runner: it never moves, so it is not kept."""
    plan = VolumeMountPlan("v-1", "data", "org", "claim", "", "/data", read_only=False)
    assert encode_request(dataclasses.replace(FULL, volumes=(plan,))) is None


def test_what_cannot_be_read_here_is_no_request() -> None:
    """None, an empty value, another layout or damaged bytes: not moved, never an error."""
    raw = encode_request(FULL)
    assert raw is not None
    other = raw.replace(f'"format":{FORMAT}'.encode(), b'"format":99')
    for stored in (None, b"", other, raw[: len(raw) // 2], b"[]", b'{"format":1}'):
        assert decode_request(stored) is None, stored
