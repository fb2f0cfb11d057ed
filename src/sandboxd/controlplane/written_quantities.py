"""CPU and memory quantities shown back to users in the units they wrote.

Why: a rejection that says ``536870912000 bytes of memory exceed the ceiling of 64Gi`` makes
the user convert numbers to find their own mistake; ``500Gi of memory exceeds the ceiling of
64Gi`` does not. The request is parsed to integers once, at the edge (the scheduler compares
integers); this keeps what the client sent beside them, by parsed value, so whichever field
a number in a message came from (a memory limit taken from the memory request, say), the
user sees their own text. Numbers nobody wrote (a runner's free memory) are formatted in the
shortest exact unit, or rounded in a binary one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sandboxd_protocol.quantities import format_cpu, format_memory

__all__ = ["WrittenQuantities"]


@dataclass(frozen=True)
class WrittenQuantities:
    """The request's quantity strings, keyed by their parsed value (millicores, bytes)."""

    cpu: Mapping[int, str] = field(default_factory=dict)
    memory: Mapping[int, str] = field(default_factory=dict)

    def show_cpu(self, millicores: int) -> str:
        """``millicores`` as the client wrote it, else as a person would ("2", "500m")."""
        return self.cpu.get(millicores) or format_cpu(millicores)

    def show_memory(self, nbytes: int) -> str:
        """``nbytes`` as the client wrote it, else in the shortest exact unit ("64Mi")."""
        return self.memory.get(nbytes) or format_memory(nbytes)
