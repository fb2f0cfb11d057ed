"""Per-organization quotas as administrators write them in the configuration file.

```yaml
quotas:
  default:                      # every organization without its own entry (all optional)
    running_sandboxes: 20
  organizations:
    team-a:                     # fields not given here fall back to `default`
      running_sandboxes: 5      # sandboxes not yet ended (creating, running, stopping)
      cpu: "8"                  # sum of their CPU limits
      memory: 16Gi              # sum of their memory limits
      concurrent_execs: 10      # StreamExec calls open at once
```

Why quantities are parsed here: values are checked once at load, so a typo stops the control
plane at start-up naming ``quotas.organizations.team-a.memory``, and requests never re-parse.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandboxd_protocol.quantities import QuantityError, cpu_millicores, memory_bytes

_ORG_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
OrgName = Annotated[str, Field(pattern=_ORG_PATTERN)]


class QuotaLimits(BaseModel):
    """Ceilings on what one organization's sandboxes take together; unset means no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    running_sandboxes: int | None = Field(default=None, ge=0)
    cpu: str | None = None
    memory: str | None = None
    concurrent_execs: int | None = Field(default=None, ge=0)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                cpu_millicores(value)
            except QuantityError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                memory_bytes(value)
            except QuantityError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @property
    def cpu_millicores(self) -> int | None:
        """``cpu`` in millicores."""
        return cpu_millicores(self.cpu) if self.cpu is not None else None

    @property
    def memory_bytes(self) -> int | None:
        """``memory`` in bytes."""
        return memory_bytes(self.memory) if self.memory is not None else None


class QuotaConfig(BaseModel):
    """Quotas for every organization (``default``) and per organization."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: QuotaLimits = QuotaLimits()
    organizations: dict[OrgName, QuotaLimits] = {}
