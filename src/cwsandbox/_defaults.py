"""``SandboxDefaults``: settings shared by many sandboxes (typically a ``Session``'s).

A call's own arguments win over the defaults, except for the collections that add up:
tags are the defaults' tags followed by the call's, and environment variables, annotations
and secrets are merged (the call's values win on a clash). The defaults are immutable, so
one object can be shared safely; ``with_overrides`` makes a changed copy.

``base_url`` defaults to the local ``sandboxd up`` address, but ``$CWSANDBOX_BASE_URL``, when
set, takes precedence over it (as in the official client); an explicit ``base_url=`` given
to a call wins over both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cwsandbox._attachments import FileSystemSnapshotOptions, Secret
from cwsandbox._config import DEFAULT_BASE_URL
from cwsandbox._network import NetworkOptions
from cwsandbox._resources import ResourceOptions, resource_messages

__all__ = ["DEFAULT_ARGS", "DEFAULT_COMMAND", "DEFAULT_IMAGE", "SandboxDefaults", "string_tuple"]

DEFAULT_IMAGE = "python:3.11"
DEFAULT_COMMAND = "/bin/sh"
#: Keep the sandbox alive until stopped, and exit 0 (not 143) on SIGTERM.
DEFAULT_ARGS = ("-c", 'trap "exit 0" TERM INT; sleep infinity & wait')


def string_tuple(value: Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    """Validate a collection of non-blank strings; a bare string is a ``TypeError``."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise TypeError(f"{what} must be a sequence of strings, not a bare string")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must contain strings, got {item!r}")
        if not item.strip():
            raise ValueError(f"{what} must not contain blank strings")
    return items


def _string_map(value: Mapping[str, str] | None, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"{what} must map strings to strings, got {key!r}: {item!r}")
    return dict(value)


@dataclass(frozen=True)
class SandboxDefaults:
    """Defaults applied to every sandbox created with them."""

    container_image: str = DEFAULT_IMAGE
    command: str = DEFAULT_COMMAND
    args: tuple[str, ...] = DEFAULT_ARGS
    base_url: str = DEFAULT_BASE_URL
    request_timeout_seconds: float = 300.0
    poll_retry_budget_seconds: float = 30.0
    poll_rpc_timeout_seconds: float = 15.0
    max_lifetime_seconds: float | None = None
    temp_dir: str = "/tmp"
    tags: tuple[str, ...] = field(default_factory=tuple)
    profile_ids: tuple[str, ...] | None = None
    profile_names: tuple[str, ...] | None = None
    runner_ids: tuple[str, ...] | None = None
    resources: ResourceOptions | dict[str, Any] | None = None
    network: NetworkOptions | None = None
    file_system_snapshot: FileSystemSnapshotOptions | dict[str, Any] | None = None
    secrets: tuple[Secret, ...] | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "tags", string_tuple(self.tags, "tags") or ())
        put(self, "args", tuple(string_tuple(self.args, "args") or ()))
        for name in ("profile_ids", "profile_names", "runner_ids"):
            put(self, name, string_tuple(getattr(self, name), name))
        put(self, "network", NetworkOptions.coerce(self.network))
        resource_messages(self.resources)  # validate now, not at the first Sandbox
        if self.secrets is not None:
            put(self, "secrets", tuple(Secret.coerce(s) for s in self.secrets))
        put(
            self,
            "environment_variables",
            _string_map(self.environment_variables, "environment_variables"),
        )
        put(self, "annotations", _string_map(self.annotations, "annotations"))
        for name in (
            "request_timeout_seconds",
            "poll_retry_budget_seconds",
            "poll_rpc_timeout_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_lifetime_seconds is not None and self.max_lifetime_seconds <= 0:
            raise ValueError("max_lifetime_seconds must be positive")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SandboxDefaults:
        """Build defaults from a plain dict (e.g. parsed config); unknown keys are an error."""
        if d is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TypeError(f"unknown SandboxDefaults keys: {sorted(unknown)}")
        return cls(**dict(d))

    @classmethod
    def coerce(cls, value: SandboxDefaults | Mapping[str, Any] | None) -> SandboxDefaults:
        """Accept defaults, a dict of them, or ``None`` (the built-in defaults)."""
        if isinstance(value, SandboxDefaults):
            return value
        return cls.from_dict(value)

    def with_overrides(self, **kwargs: Any) -> SandboxDefaults:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **kwargs)

    def merge_tags(self, additional: Iterable[str] | None) -> list[str]:
        """The defaults' tags followed by ``additional``."""
        return [*self.tags, *(string_tuple(additional, "tags") or ())]

    def merge_environment_variables(self, additional: Mapping[str, str] | None) -> dict[str, str]:
        """The defaults' variables updated with ``additional``."""
        return {**self.environment_variables, **_string_map(additional, "environment_variables")}

    def merge_annotations(self, additional: Mapping[str, str] | None) -> dict[str, str]:
        """The defaults' annotations updated with ``additional``."""
        return {**self.annotations, **_string_map(additional, "annotations")}
