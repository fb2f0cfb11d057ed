"""Overcommit: how far a runner's resource *requests* may add up beyond what it has.

A sandbox's request is what it reserves from its runner (placement and discovery's
``available_*`` count it); its limit is what its cgroup enforces. Most sandboxes of agent
workloads sit idle, so requests that match a real host one-to-one leave it nearly empty:
with the old embedded defaults (100m CPU each) a 2-core host held 20 idle sandboxes.

The ratio multiplies a runner's allocatable CPU and memory (the host minus what it keeps
for itself, ``runner/capacity.py``) to give what requests may reserve, like OpenStack Nova's
``cpu_allocation_ratio``/``ram_allocation_ratio``. What it does not change:

* **limits**: every sandbox's cgroup still caps its own CPU and memory, and the runner-wide
  parent cgroup still caps all of them together at the *allocatable* amounts, never the
  overcommitted ones, so an overcommitted host slows down (CPU) or OOM-kills inside the
  sandboxes (memory); the host's own reserve is never touched;
* **GPUs**, which are never overcommitted;
* discovery stays truthful: ``available_*`` is exactly what placement will still accept
  (allocatable × ratio − requested), shown beside the allocatable amounts, the requested
  sums and the ratios.

Why CPU and memory separately: CPU time is shared and a busy host only gets slower, so
overcommitting it is cheap; memory taken cannot be given back without killing something, so
its ratio should stay near 1. A file that says nothing gets 1.0 for both (the behaviour
before this setting existed); the embedded defaults (``default.yaml``) choose CPU 16, memory
1.0. Per runner: ``runners[].overcommit`` falls back to the top-level ``overcommit`` field by
field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_CPU_RATIO = 1000.0
MAX_MEMORY_RATIO = 100.0


class Overcommit(BaseModel):
    """Ratios of requestable to allocatable CPU and memory (1.0: no overcommit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(default=1.0, ge=1.0, le=MAX_CPU_RATIO)
    memory: float = Field(default=1.0, ge=1.0, le=MAX_MEMORY_RATIO)

    def cpu_millicores(self, allocatable: int) -> int:
        """How many millicores of requests ``allocatable`` millicores may carry."""
        return int(max(allocatable, 0) * self.cpu)

    def memory_bytes(self, allocatable: int) -> int:
        """How many bytes of requests ``allocatable`` bytes may carry."""
        return int(max(allocatable, 0) * self.memory)


class OvercommitOverride(BaseModel):
    """A runner's own ratios; a field left out takes the top-level one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(default=None, ge=1.0, le=MAX_CPU_RATIO)
    memory: float | None = Field(default=None, ge=1.0, le=MAX_MEMORY_RATIO)

    def over(self, base: Overcommit) -> Overcommit:
        """These ratios, falling back to ``base`` for what is unset."""
        return Overcommit(
            cpu=base.cpu if self.cpu is None else self.cpu,
            memory=base.memory if self.memory is None else self.memory,
        )
