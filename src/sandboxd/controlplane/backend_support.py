"""What a runner's sandbox backend can do, read once from the capabilities it registered with.

Why: a runner whose backend does not work (``--backend none``, a host without root) used to
look like the least loaded runner forever — every Start placed on it failed and released its
reservation. Runners now report each backend they know with whether it works, why not, and
what it supports (``Capabilities.backend_statuses``); placement asks :class:`BackendSupport`
instead of trusting the profile alone, so a profile offering ``internet`` egress does not
send sandboxes to a runner whose backend cannot provide it.

Runners older than that field send no statuses. They are trusted as before (any egress,
ingress and GPUs), so a mixed-version fleet keeps placing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd_protocol.sandboxd_v1 import runner_pb2


@dataclass(frozen=True)
class BackendSupport:
    """The working backend(s) of one runner, or why there is none.

    ``egress_types`` / ``ingress_types`` are ``None`` when the runner did not say (an older
    runner): anything is allowed then.
    """

    backend: str
    problem: str = ""
    egress_types: frozenset[str] | None = None
    ingress_types: frozenset[str] | None = None
    gpus: bool = True
    volumes: bool = False  # persistent volumes (never assumed of a runner that did not say)

    @property
    def working(self) -> bool:
        """Whether some backend on the runner can run sandboxes."""
        return not self.problem

    def allows_egress(self, egress_type: str) -> bool:
        """Whether the backend can enforce this egress type (``none``, ``internet``, ...)."""
        return self.egress_types is None or egress_type in self.egress_types

    def allows_ingress(self, ingress_type: str) -> bool:
        """Whether the backend can publish ports with this ingress type."""
        return self.ingress_types is None or ingress_type in self.ingress_types


def support_of(capabilities: runner_pb2.Capabilities) -> BackendSupport:
    """Interpret ``capabilities.backend_statuses`` (see the module docstring)."""
    statuses = list(capabilities.backend_statuses)
    if not statuses:
        return BackendSupport(backend=", ".join(capabilities.backends) or "unknown")
    working = [s for s in statuses if s.available]
    if not working:
        why = "; ".join(f"{s.name}: {s.reason or 'unavailable'}" for s in statuses)
        return BackendSupport(
            backend="none",
            problem=f"no working backend ({why})",
            egress_types=frozenset(),
            ingress_types=frozenset(),
            gpus=False,
        )
    return BackendSupport(
        backend=", ".join(s.name for s in working),
        egress_types=frozenset(t for s in working for t in s.egress_types),
        ingress_types=frozenset(t for s in working for t in s.ingress_types),
        gpus=any(s.gpus for s in working),
        volumes=any(s.volumes for s in working),
    )
