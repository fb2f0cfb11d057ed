"""Our v1 .proto text is wire-identical to the official 1.22.0 client's descriptors.

Why compare descriptors and not just call RPCs: a field the scenarios never use could still
be misnumbered or mistyped. The same summary (every message, nested message and enum:
field numbers, names, types, repetition, message/enum type, oneof, presence; every service
method with its types and streaming) is printed by the client's embedded descriptors in its
own virtualenv and by ``sandboxd_protocol.v1`` in ours, and they must be equal.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.conftest import run_python
from tests.support.official import OFFICIAL_V1_VERSION, official_python

pytestmark = pytest.mark.official

SUMMARY = r"""
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
out = {}

def field_row(f):
    target = f.message_type or f.enum_type
    oneof = f.containing_oneof
    return [f.number, f.name, f.type, f.label == 3 if hasattr(f, "label") else f.is_repeated,
            target.full_name if target else "",
            oneof.name if oneof is not None and not oneof.name.startswith("_") else "",
            bool(f.has_presence)]

def walk(message, prefix):
    name = prefix + message.name
    out[name] = sorted(field_row(f) for f in message.fields)
    for nested in message.nested_types:
        walk(nested, name + ".")
    for enum in message.enum_types:
        out[name + "." + enum.name] = sorted([v.number, v.name] for v in enum.values)

for info in pkgutil.iter_modules(package.__path__):
    if not info.name.endswith("_pb2"):
        continue
    descriptor = importlib.import_module(f"{sys.argv[1]}.{info.name}").DESCRIPTOR
    if descriptor.package != "coreweave.sandbox.v1":
        continue
    for message in descriptor.message_types_by_name.values():
        walk(message, "")
    for enum in descriptor.enum_types_by_name.values():
        out[enum.name] = sorted([v.number, v.name] for v in enum.values)
    for service in descriptor.services_by_name.values():
        out["service " + service.name] = sorted(
            [m.name, m.input_type.full_name, m.output_type.full_name,
             m.client_streaming, m.server_streaming] for m in service.methods)
print(json.dumps(out, sort_keys=True))
"""


def summary(python: str, package: str) -> dict[str, object]:
    script = SUMMARY.replace("sys.argv[1]", repr(package))
    return json.loads(run_python(python, script, {"PYTHONWARNINGS": "ignore"}))  # type: ignore[no-any-return]


def test_every_message_enum_and_rpc_matches_the_official_client() -> None:
    theirs = summary(str(official_python(OFFICIAL_V1_VERSION)), "cwsandbox._proto")
    ours = summary(sys.executable, "sandboxd_protocol.v1")
    assert len(theirs) > 150  # 114 messages, 26 enums, 7 services (v1.md Appendix A)
    different = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    assert different == []
