"""A starting sandbox's request, stored with its record, so a move survives a restart.

Why: a start its runner fails for its own reasons is placed again from the request the
client sent (``start_moves.py``): the same pins, profile and limits. That request used to be
held in memory only, so a start placed before the control plane restarted (or by another
control plane on the same database) ended FAILED when its runner then failed it, although
another runner could have run it. Its request now goes into the row at Start's insert (the
one write Start makes anyway) and is dropped from it once the start settles.

What is kept: every field placement and the spec are built from, as JSON. Not kept:
mounted files (the stored spec has them, as in memory) and the request of a start with
volumes, which pin it to its volumes' one runner, so it never moves. A stored request this
version cannot read (written by another one) is not moved, as before.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sandboxd.controlplane.secret_refs import SecretUse
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.controlplane.written_quantities import WrittenQuantities
from sandboxd.snapshots.scratch_request import ScratchRequest
from sandboxd.store.secret_store import SecretKey

__all__ = ["FORMAT", "decode_request", "encode_request"]

FORMAT = 1
"""The layout of a stored request; one of another layout is not read (not moved)."""
_TUPLES = ("command", "tags", "profile_names", "runner_ids", "exposed_ports", "egress_cidrs")


def encode_request(request: SandboxRequest) -> bytes | None:
    """``request`` as stored with its record; None when it can never move (volumes)."""
    if request.volumes:
        return None
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    fields.update(
        mounted_files=[],
        secrets=[dataclasses.asdict(use) for use in request.secrets],
        written={
            "cpu": [[k, v] for k, v in request.written.cpu.items()],
            "memory": [[k, v] for k, v in request.written.memory.items()],
        },
        scratch=dataclasses.asdict(request.scratch) if request.scratch else None,
        volumes=[],
    )
    return json.dumps({"format": FORMAT, "request": fields}, separators=(",", ":")).encode()


def decode_request(raw: bytes | None) -> SandboxRequest | None:
    """The request :func:`encode_request` stored; None if none, or unreadable here."""
    if not raw:
        return None
    try:
        stored = json.loads(raw)
        if stored.get("format") != FORMAT:
            return None
        return _request(stored["request"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _request(fields: dict[str, Any]) -> SandboxRequest:
    known = {f.name for f in dataclasses.fields(SandboxRequest)}
    values = {name: value for name, value in fields.items() if name in known}
    for name in _TUPLES:
        values[name] = tuple(values.get(name) or ())
    values["environment"] = {str(k): str(v) for k, v in (values.get("environment") or {}).items()}
    values["mounted_files"] = ()
    values["volumes"] = ()
    values["secrets"] = tuple(
        SecretUse(
            key=SecretKey(**use["key"]),
            env_var=use["env_var"],
            field_path=use["field_path"],
            store_field=use["store_field"],
        )
        for use in values.get("secrets") or ()
    )
    written = values.get("written") or {}
    values["written"] = WrittenQuantities(
        cpu={int(k): str(v) for k, v in written.get("cpu", [])},
        memory={int(k): str(v) for k, v in written.get("memory", [])},
    )
    scratch = values.get("scratch")
    values["scratch"] = ScratchRequest(**scratch) if scratch else None
    return SandboxRequest(**values)
