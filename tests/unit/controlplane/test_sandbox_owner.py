"""Sandbox records name their owner organization, also after a restart and an upgrade."""

from __future__ import annotations

from sandboxd.controlplane.sandboxes import SandboxRecord
from sandboxd.identity.model import ADMIN_ORG


def record(**fields: object) -> SandboxRecord:
    values: dict[str, object] = {
        "sandbox_id": "sb-1",
        "status": 2,
        "runner_id": "r",
        "runner_group_id": "g",
        "profile_name": "default",
        "image": "python:3.11",
    }
    values.update(fields)
    return SandboxRecord(**values)  # type: ignore[arg-type]


def test_the_owner_and_limits_survive_the_store() -> None:
    original = record(owner_org="team-a", cpu_limit_millicores=500, memory_limit_bytes=1 << 29)
    again = SandboxRecord.from_document(original.to_document())
    assert again == original


def test_records_stored_before_owners_existed_belong_to_the_administrators() -> None:
    document = record().to_document()
    for key in ("owner_org", "cpu_limit_millicores", "memory_limit_bytes"):
        del document[key]
    old = SandboxRecord.from_document(document)
    assert old.owner_org == ADMIN_ORG
    assert (old.cpu_limit_millicores, old.memory_limit_bytes) == (0, 0)
