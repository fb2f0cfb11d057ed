"""Shipping a Python function to a sandbox as source code plus what it refers to.

Pickling a function would tie the sandbox to the caller's exact Python and library versions
(and cloudpickle is not in the default image), so the function travels as *source text* in a
JSON payload, with the names it uses resolved on the caller's side:

* modules it uses become imports (``np`` → ``import numpy as np``);
* functions and classes defined in the caller's own script (``__main__``) or in the same
  module as the function are shipped as source too, recursively;
* functions and classes from other modules become ``from module import name``;
* JSON-serializable constants (and closure variables) are shipped as values.

Anything else is left out, and the remote run reports the resulting ``NameError`` with its
traceback. Line numbers are kept: the source is compiled remotely under the caller's file
name at its original line, so a remote traceback points into the caller's own file.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any

from cwsandbox.exceptions import FunctionError

__all__ = ["FunctionSource", "collect"]

_JSON_SCALARS = (str, int, float, bool, type(None))
#: How many helper functions/classes one function may pull in with it.
MAX_DEFINITIONS = 64


@dataclass
class FunctionSource:
    """The parts of the payload that describe the code (arguments are added per call)."""

    name: str
    #: ``[filename, first_line, source]`` per definition, dependencies first.
    sources: list[list[Any]] = field(default_factory=list)
    #: ``[alias, module, attribute or None]``.
    imports: list[list[Any]] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    #: ``[name, defined name]`` for a definition used under another name.
    aliases: list[list[str]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sources": self.sources,
            "imports": self.imports,
            "constants": self.constants,
            "aliases": self.aliases,
        }


def _json_value(value: object) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list | tuple | dict):
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return False
        return True
    return False


def _names(code: types.CodeType) -> set[str]:
    """Global names a code object (and the code nested in it) may look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _outer_names(node: ast.AST) -> set[str]:
    """Names a definition evaluates where it is defined: defaults, and a class's bases/body.

    A function's body is covered exactly by its code object; these are not in it.
    """
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        parts: list[ast.AST] = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
    elif isinstance(node, ast.ClassDef):
        parts = [*node.bases, *node.keywords, *node.body]
    else:
        return set()
    return {
        n.id
        for part in parts
        for n in ast.walk(part)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def _definition_source(obj: Any) -> tuple[str, int, str, set[str]]:
    """(file, first line, source without decorators, outer names) of a function or class."""
    try:
        lines, start = inspect.getsourcelines(obj)
        filename = inspect.getsourcefile(obj) or "<unknown>"
    except (OSError, TypeError) as err:
        raise FunctionError(
            f"cannot send {obj.__qualname__!r} to a sandbox: its source code is not "
            "available (define it in a file, not an interactive session)"
        ) from err
    text = textwrap.dedent("".join(lines))
    tree = ast.parse(text)
    node = tree.body[0]
    definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    if isinstance(node, definition) and node.decorator_list:
        skip = node.lineno - 1  # the ``def`` line; decorators sit above it
        text = "\n".join(text.splitlines()[skip:]) + "\n"
        start += skip
    return filename, start, text, _outer_names(node)


class _Collector:
    def __init__(self, home_module: str) -> None:
        self.home = home_module
        self.out: FunctionSource | None = None
        self.seen: set[int] = set()
        self.bound: set[str] = set()

    def _local(self, obj: Any) -> bool:
        module = getattr(obj, "__module__", None)
        return module in ("__main__", self.home)

    def add_definition(self, obj: Any) -> None:
        assert self.out is not None
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        if len(self.seen) > MAX_DEFINITIONS:
            raise FunctionError(f"function refers to more than {MAX_DEFINITIONS} definitions")
        filename, start, text, outer = _definition_source(obj)
        scope: dict[str, Any] = {}
        if isinstance(obj, types.FunctionType):
            scope = obj.__globals__
            self._resolve(obj.__code__, scope, obj)
        elif isinstance(obj, type):
            for member in vars(obj).values():
                inner = getattr(member, "__func__", member)  # staticmethod / classmethod
                if isinstance(inner, types.FunctionType):
                    scope = inner.__globals__
                    self._resolve(inner.__code__, scope, inner)
            module = sys.modules.get(obj.__module__)
            scope = vars(module) if module is not None else scope
        for name in sorted(outer):
            if name in scope:
                self._bind(name, scope[name])
        self.out.sources.append([filename, start, text])

    def _resolve(self, code: types.CodeType, scope: dict[str, Any], fn: Any) -> None:
        assert self.out is not None
        if fn.__closure__:
            for name, cell in zip(code.co_freevars, fn.__closure__, strict=False):
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                self._bind(name, value)
        for name in sorted(_names(code)):
            if name in self.bound or name not in scope:
                continue
            self._bind(name, scope[name])

    def _bind(self, name: str, value: Any) -> None:
        assert self.out is not None
        if name in self.bound:
            return
        self.bound.add(name)
        if isinstance(value, types.ModuleType):
            self.out.imports.append([name, value.__name__, None])
        elif isinstance(value, types.FunctionType | type):
            if self._local(value):
                self.add_definition(value)
                if value.__name__ != name:
                    self.out.aliases.append([name, value.__name__])
            else:
                self.out.imports.append([name, value.__module__, value.__qualname__])
        elif isinstance(value, types.BuiltinFunctionType):
            module = getattr(value, "__module__", None)
            if module and module != "builtins":
                self.out.imports.append([name, module, value.__name__])
        elif _json_value(value):
            self.out.constants[name] = value


def collect(fn: types.FunctionType) -> FunctionSource:
    """Describe ``fn`` and everything it refers to; ``FunctionError`` if it cannot be sent."""
    collector = _Collector(fn.__module__)
    collector.out = FunctionSource(name=fn.__name__)
    collector.bound.add(fn.__name__)
    collector.add_definition(fn)
    return collector.out
