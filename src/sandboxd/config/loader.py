"""Load and resolve the administrator's configuration file.

Why a separate resolver: a binding's ``overrides`` are a *partial* profile spec applied only on
one runner (admin-model.md §2.5–2.6). We merge them once, at load time, into a complete
:class:`ResolvedProfile` per runner×binding, so an invalid override is refused at start-up
(naming the file and the path inside it) and discovery never recomputes merges per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sandboxd.config.models import Binding, EgressModeSpec, PlatformConfig, ProfileSpec
from sandboxd.config.quantities import ProfileQuantities, quantities_of

DEFAULT_CONFIG_NAME = "default.yaml"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, path and problem."""


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile as bound to one runner: alias, template and the merged spec.

    ``quantities`` holds the spec's resources as integers, parsed here once so that no
    Start re-parses a quantity string (see :mod:`sandboxd.config.quantities`).
    """

    profile_name: str
    template: str
    is_default: bool
    spec: ProfileSpec
    quantities: ProfileQuantities = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantities", quantities_of(self.spec))

    @property
    def egress_modes(self) -> tuple[str, ...]:
        """Names of the egress modes this binding offers, in configuration order."""
        return tuple(self.spec.network.egress.modes)

    @property
    def ingress_modes(self) -> tuple[str, ...]:
        """Names of the ingress (service exposure) modes this binding offers."""
        ingress = self.spec.network.ingress
        return tuple(ingress.modes) if ingress else ()

    def egress_mode(self, name: str) -> EgressModeSpec | None:
        """The egress mode called ``name``, if this binding offers it."""
        return self.spec.network.egress.modes.get(name)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its deepest ancestor in the text.

    Why: "quotas.organizations.team-a.memory" is exact but a person editing a long file looks
    for a line; a missing field is reported at the mapping that should hold it.
    """
    node = root
    if node is None:
        return None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


# "runners[0].bindings[1].profile: unknown profile 'x'" from a model-level validator.
_NAMED_PATH = re.compile(r"^([a-z_]+(?:\[\d+\])*(?:\.[a-z_]+(?:\[\d+\])*)*): (.*)\Z", re.S)


def _where(source: str, path: str, line: int | None) -> str:
    return f"{source}: {path}" + (f" (line {line})" if line is not None else "")


def _loc_of(prefix: str, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """``prefix`` ("runners[0].bindings[1].overrides") as a location tuple, then ``loc``."""
    parts: list[int | str] = []
    for piece in prefix.split(".") if prefix else []:
        name, *indexes = piece.replace("]", "").split("[")
        parts.append(name)
        parts.extend(int(i) for i in indexes)
    return (*parts, *loc)


def _format_validation(
    source: str, exc: ValidationError, prefix: str = "", root: yaml.Node | None = None
) -> str:
    lines = []
    errors = exc.errors()
    for error in errors:
        loc = tuple(error["loc"])
        # pydantic also reports a too-short tuple when one of its items failed; that
        # second error is noise that would send the reader looking at the wrong thing.
        if error["type"] == "too_short" and any(
            len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc
            for other in errors
        ):
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        named = _NAMED_PATH.match(message) if not loc else None
        if named is not None:  # a whole-file check names the path in its message
            loc, message = _loc_of(named.group(1), ()), named.group(2)
        where = _format_location(loc)
        if prefix:
            where = prefix if where == "(top level)" else f"{prefix}.{where}"
        lines.append(f"{_where(source, where, _line_of(root, _loc_of(prefix, loc)))}: {message}")
    return "\n".join(lines)


def resolve_binding(config: PlatformConfig, binding: Binding) -> ResolvedProfile:
    """Merge a binding's overrides into its profile's spec."""
    base = config.profile(binding.profile).spec
    spec = base
    if binding.overrides:
        spec = ProfileSpec.model_validate(
            _deep_merge(base.model_dump(mode="json", exclude_defaults=True), binding.overrides)
        )
    return ResolvedProfile(binding.alias, binding.profile, binding.is_default, spec)


def parse_config(text: str, source: str) -> PlatformConfig:
    """Parse YAML text into a validated configuration, or raise :class:`ConfigError`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{at}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping with 'profiles'")
    try:
        config = PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc, root=root)) from exc
    _check_overrides(config, source, root)
    return config


def _check_overrides(config: PlatformConfig, source: str, root: yaml.Node | None) -> None:
    groups = [("default_bindings", config.default_bindings)] + [
        (f"runners[{i}].bindings", runner.bindings) for i, runner in enumerate(config.runners)
    ]
    for where, bindings in groups:
        for j, binding in enumerate(bindings):
            try:
                resolve_binding(config, binding)
            except ValidationError as exc:
                raise ConfigError(
                    _format_validation(source, exc, prefix=f"{where}[{j}].overrides", root=root)
                ) from exc


def load_config(path: Path | None) -> PlatformConfig:
    """Load ``path``, or the embedded default configuration when ``path`` is None."""
    if path is None:
        text = resources.files("sandboxd.config").joinpath(DEFAULT_CONFIG_NAME).read_text()
        return parse_config(text, f"<embedded {DEFAULT_CONFIG_NAME}>")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    return parse_config(text, str(path))
