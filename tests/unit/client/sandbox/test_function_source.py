"""What ``collect`` ships with a function: sources, imports, constants (no server)."""

from __future__ import annotations

import json
import os.path
from os.path import join as path_join

import pytest

from cwsandbox import FunctionError
from cwsandbox._function_source import collect

LIMIT = 7
NAMES = ["a", "b"]
HANDLE = object()  # not JSON: left out


def helper(x: int) -> int:
    return x + LIMIT


def uses_everything(x: int) -> list[str]:
    return [os.path.basename("/a/b"), path_join("a", "b"), str(helper(x)), *NAMES, str(HANDLE)]


def test_dependencies_are_resolved() -> None:
    src = collect(uses_everything)  # type: ignore[arg-type]
    payload = src.payload()
    assert json.loads(json.dumps(payload)) == payload  # all JSON
    assert ["os", "os", None] in payload["imports"]
    assert ["path_join", "posixpath", "join"] in payload["imports"]
    assert payload["constants"] == {"LIMIT": 7, "NAMES": ["a", "b"]}
    names = [s[2].split("(")[0] for s in payload["sources"]]
    assert names == ["def helper", "def uses_everything"]  # dependencies first
    filename, line, text = payload["sources"][-1]
    assert filename == __file__ and text.startswith("def uses_everything")
    with open(__file__) as f:
        assert f.readlines()[line - 1].startswith("def uses_everything")


def test_closure_values_are_shipped() -> None:
    threshold = 3
    tags = {"k": "v"}

    def inner(x: int) -> bool:
        return x > threshold and bool(tags)

    assert collect(inner).constants == {"threshold": 3, "tags": {"k": "v"}}  # type: ignore[arg-type]


def test_source_must_be_available() -> None:
    namespace: dict[str, object] = {}
    exec("def made_up():\n    return 1\n", namespace)
    with pytest.raises(FunctionError, match="source code is not available"):
        collect(namespace["made_up"])  # type: ignore[arg-type]


class Base:
    KIND = "base"


class Derived(Base):
    LIMIT_COPY = LIMIT


def with_defaults(x: int = LIMIT, *, names: list[str] = NAMES) -> str:
    return Derived().KIND + str(x) + str(names)


def test_default_values_and_class_bases_are_resolved() -> None:
    payload = collect(with_defaults).payload()  # type: ignore[arg-type]
    assert payload["constants"] == {"LIMIT": 7, "NAMES": ["a", "b"]}
    names = [s[2].split("(")[0].split(":")[0] for s in payload["sources"]]
    assert names == ["class Base", "class Derived", "def with_defaults"]
    namespace: dict[str, object] = dict(payload["constants"])
    for filename, line, text in payload["sources"]:
        exec(compile("\n" * (line - 1) + text, filename, "exec"), namespace)
    assert namespace["with_defaults"]() == "base7['a', 'b']"  # type: ignore[operator]
