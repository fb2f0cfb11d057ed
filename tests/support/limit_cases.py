"""Requests just over (or exactly at) the size limits of ``controlplane/limits.py``.

Built from the limits themselves, so the unit and end-to-end suites stay right when a
limit moves: each value here is within every limit except the one it is named after.
"""

from __future__ import annotations

from sandboxd.controlplane import limits as L


def fill(total: int, piece: int, letter: str) -> list[str]:
    """Strings of at most ``piece`` bytes adding up to exactly ``total`` bytes."""
    return [letter * min(piece, total - start) for start in range(0, total, piece)]


def env_of(values: list[str]) -> dict[str, str]:
    """Variables ``K000``, ``K001``... (four-byte names) holding ``values``."""
    return {f"K{i:03d}": value for i, value in enumerate(values)}


# One exec command (or a start's command "sh" + args) whose arguments are each within
# MAX_ARG_BYTES but together one byte over MAX_ARGV_BYTES.
EXEC_ARGV_OVER = fill(L.MAX_ARGV_BYTES + 1, L.MAX_ARG_BYTES, "a")
START_ARGS_OVER = fill(L.MAX_ARGV_BYTES - 2 + 1, L.MAX_ARG_BYTES, "a")
# An environment whose values are each within MAX_ENV_VALUE_BYTES but together over
# MAX_ENV_BYTES.
ENV_OVER = env_of(fill(L.MAX_ENV_BYTES + 1, L.MAX_ENV_VALUE_BYTES, "v"))
# Arguments at their own limit (with "sh") and an environment within its own limits that
# together are one byte over the payload an agent message carries.
FULL_ARGS = fill(L.MAX_ARGV_BYTES - 2, L.MAX_ARG_BYTES, "a")
_ROOM = L.PAYLOAD_BYTES - L.MAX_ARGV_BYTES  # what the environment may add at most
ENV_AT_PAYLOAD = env_of(fill(_ROOM - 2 * 4, _ROOM // 2, "v"))  # two names of four bytes
ENV_OVER_PAYLOAD = env_of(fill(_ROOM - 2 * 4 + 1, _ROOM // 2, "v"))

assert sum(len(k) + len(v) for k, v in ENV_OVER_PAYLOAD.items()) <= L.MAX_ENV_BYTES
assert len(ENV_OVER) <= L.MAX_ENV_ENTRIES
