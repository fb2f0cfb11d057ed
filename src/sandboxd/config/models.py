"""Profiles and runner bindings as administrators write them (admin-model.md §2).

Why pydantic with ``extra="forbid"``: a typo in a guardrail (``egres:``) must be refused at
start-up with the path of the bad key, not silently ignored and turned into a wide-open sandbox.
Cross-field rules (the default egress mode exists, exactly one default binding per runner, a
binding names a known profile) are checked here too, so a loaded :class:`PlatformConfig` is
always consistent.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandboxd.config.overcommit import Overcommit, OvercommitOverride
from sandboxd.config.quotas import QuotaConfig
from sandboxd_protocol.quantities import QuantityError, cpu_millicores, memory_bytes

_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EgressType(StrEnum):
    """How a sandbox may reach the network (the wire enum ``EgressType`` we support)."""

    NONE = "none"
    INTERNET = "internet"
    ALLOWLIST = "allowlist"


class IngressType(StrEnum):
    """Who may reach a sandbox's exposed ports."""

    PUBLIC = "public"
    INTERNAL = "internal"


class EgressModeSpec(_Strict):
    """One named egress mode; ``allowlist`` modes list the CIDRs they may reach."""

    type: EgressType
    cidrs: tuple[str, ...] = ()

    @field_validator("cidrs")
    @classmethod
    def _valid_cidrs(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR (example: 140.82.112.0/20)") from exc
        return cidrs

    @model_validator(mode="after")
    def _cidrs_only_for_allowlist(self) -> Self:
        if self.type is EgressType.ALLOWLIST and not self.cidrs:
            raise ValueError("an allowlist egress mode needs at least one entry in cidrs")
        if self.type is not EgressType.ALLOWLIST and self.cidrs:
            raise ValueError(f"cidrs are only allowed on allowlist modes, not {self.type.value}")
        return self


class IngressModeSpec(_Strict):
    """One named ingress (service exposure) mode."""

    type: IngressType


class EgressConfig(_Strict):
    """Named egress modes and the one used when a sandbox asks for none."""

    default: str
    modes: dict[Name, EgressModeSpec]

    @model_validator(mode="after")
    def _default_exists(self) -> Self:
        if self.default not in self.modes:
            raise ValueError(
                f"default egress mode {self.default!r} is not one of the modes {sorted(self.modes)}"
            )
        return self


class IngressConfig(_Strict):
    """Named ingress modes and the one used when a sandbox exposes ports without naming one."""

    default: str
    modes: dict[Name, IngressModeSpec]

    @model_validator(mode="after")
    def _default_exists(self) -> Self:
        if self.default not in self.modes:
            raise ValueError(
                f"default ingress mode {self.default!r} is not one of the modes "
                f"{sorted(self.modes)}"
            )
        return self


class NetworkConfig(_Strict):
    """The networking guardrails of a profile."""

    egress: EgressConfig = EgressConfig(
        default="none", modes={"none": EgressModeSpec(type=EgressType.NONE)}
    )
    ingress: IngressConfig | None = None


def _check_cpu(value: str | None) -> str | None:
    if value is not None:
        try:
            cpu_millicores(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc
    return value


def _check_memory(value: str | None) -> str | None:
    if value is not None:
        try:
            memory_bytes(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc
    return value


class ResourceDefaults(_Strict):
    """Requests and limits applied when a sandbox gives none (Kubernetes quantities)."""

    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None

    _cpu = field_validator("cpu_request", "cpu_limit")(_check_cpu)
    _mem = field_validator("memory_request", "memory_limit")(_check_memory)


class ResourceCeilings(_Strict):
    """The most one sandbox on this profile may ask for."""

    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = Field(default=None, ge=0)
    disk: str | None = None
    pids: int | None = Field(default=None, ge=1)

    _cpu = field_validator("cpu")(_check_cpu)
    _mem = field_validator("memory", "disk")(_check_memory)


MAX_WARM_POOL_SIZE = 64
"""The most sandboxes one profile's warm pool may keep ready on one runner.

Each ready sandbox holds a user-id range, a cgroup, a writable layer and (with egress) a
network namespace while nobody uses it; beyond a few dozen the pool costs more than the
burst it absorbs, and a typo (``size: 1000``) must not make every runner start a thousand.
"""


class WarmPoolConfig(_Strict):
    """``warm_pool: {size: N}``: keep N sandboxes of the profile's defaults ready on each runner.

    A Start whose resolved spec matches them (same image, resources, network, disk; no
    exposed ports or mounted files) claims one instead of creating it; see
    ``sandboxd.runner.warm_pool``.
    """

    size: int = 0

    @field_validator("size", mode="before")
    @classmethod
    def _size_in_range(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"must be a whole number from 0 to {MAX_WARM_POOL_SIZE} (got {value!r})"
            )
        if not 0 <= value <= MAX_WARM_POOL_SIZE:
            raise ValueError(
                f"must be from 0 to {MAX_WARM_POOL_SIZE} sandboxes per runner (got {value})"
            )
        return value


class ProfileSpec(_Strict):
    """What a sandbox on this profile runs with and may ask for."""

    container_image: str | None = None
    resource_defaults: ResourceDefaults = ResourceDefaults()
    resource_ceilings: ResourceCeilings = ResourceCeilings()
    gpu_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    network: NetworkConfig = NetworkConfig()
    tags: tuple[str, ...] = ()
    max_lifetime_seconds: int | None = Field(default=None, ge=1)
    warm_pool: WarmPoolConfig = WarmPoolConfig()


class Profile(_Strict):
    """A profile template: a named, reusable set of guardrails."""

    display_name: Name
    description: str = ""
    labels: dict[str, str] = {}
    spec: ProfileSpec = ProfileSpec()


class Binding(_Strict):
    """A profile bound to a runner under an alias, with per-runner overrides."""

    profile: Name
    profile_name: Name | None = None
    is_default: bool = False
    overrides: dict[str, Any] = {}

    @property
    def alias(self) -> str:
        """The name clients select this binding by (defaults to the profile's name)."""
        return self.profile_name or self.profile


class RunnerConfig(_Strict):
    """Administrator settings for one runner, matched by ``runner_id`` when it registers."""

    runner_id: str = Field(min_length=1)
    runner_group_id: str | None = None
    shared: bool = False
    bindings: tuple[Binding, ...] = Field(min_length=1)
    overcommit: OvercommitOverride | None = None

    @model_validator(mode="after")
    def _one_default(self) -> Self:
        check_bindings(self.bindings)
        return self


def check_bindings(bindings: tuple[Binding, ...]) -> None:
    """Exactly one default binding, and no alias used twice."""
    defaults = [b.alias for b in bindings if b.is_default]
    if len(defaults) != 1:
        raise ValueError(
            f"exactly one binding must have is_default: true (found {len(defaults)}"
            + (f": {defaults}" if defaults else "")
            + ")"
        )
    aliases = [b.alias for b in bindings]
    duplicates = sorted({a for a in aliases if aliases.count(a) > 1})
    if duplicates:
        raise ValueError(f"profile_name used by more than one binding: {duplicates}")


class PlatformConfig(_Strict):
    """The whole administrator configuration given to the control plane."""

    profiles: tuple[Profile, ...] = Field(min_length=1)
    runners: tuple[RunnerConfig, ...] = ()
    default_bindings: tuple[Binding, ...] = ()
    quotas: QuotaConfig = QuotaConfig()
    overcommit: Overcommit = Overcommit()  # every runner's, unless its entry says otherwise

    @field_validator("default_bindings")
    @classmethod
    def _defaults_consistent(cls, bindings: tuple[Binding, ...]) -> tuple[Binding, ...]:
        if bindings:
            check_bindings(bindings)
        return bindings

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        names = [p.display_name for p in self.profiles]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"display_name used by more than one profile: {duplicates}")
        runner_ids = [r.runner_id for r in self.runners]
        dup_runners = sorted({r for r in runner_ids if runner_ids.count(r) > 1})
        if dup_runners:
            raise ValueError(f"runner_id configured more than once: {dup_runners}")
        known = set(names)
        for where, bindings in [("default_bindings", self.default_bindings)] + [
            (f"runners[{i}].bindings", r.bindings) for i, r in enumerate(self.runners)
        ]:
            for j, binding in enumerate(bindings):
                if binding.profile not in known:
                    raise ValueError(
                        f"{where}[{j}].profile: unknown profile {binding.profile!r} "
                        f"(known: {sorted(known)})"
                    )
        return self

    def profile(self, display_name: str) -> Profile:
        """The profile template with this display name."""
        for profile in self.profiles:
            if profile.display_name == display_name:
                return profile
        raise KeyError(display_name)

    def bindings_for(self, runner_id: str) -> tuple[Binding, ...]:
        """Bindings of a runner: its own entry, else ``default_bindings``."""
        for runner in self.runners:
            if runner.runner_id == runner_id:
                return runner.bindings
        return self.default_bindings

    def overcommit_for(self, runner_id: str) -> Overcommit:
        """A runner's overcommit ratios: its entry's, field by field over the top-level ones."""
        entry = self.runner_config(runner_id)
        if entry is None or entry.overcommit is None:
            return self.overcommit
        return entry.overcommit.over(self.overcommit)

    def runner_config(self, runner_id: str) -> RunnerConfig | None:
        """The administrator's entry for this runner, if there is one."""
        for runner in self.runners:
            if runner.runner_id == runner_id:
                return runner
        return None
