"""Placeable runners ordered by load, kept up to date as sandboxes come and go.

Why: placement picks the least loaded runner that fits — fewest sandboxes, then most free
CPU, then the runner id — and used to find it by checking all runners on every Start
(hundreds of milliseconds of event-loop time with 10,000 runners). The index keeps the
order incrementally (a sorted list: O(log n) per reserve, release, registration or
disconnect), so placement walks it from the least loaded runner and stops at the first that
fits; the usual Start looks at a handful of runners.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedList

LoadKey = tuple[int, int, str]


def load_key(running_sandboxes: int, free_cpu_millicores: int, runner_id: str) -> LoadKey:
    """The order placement prefers: fewest sandboxes, then most free CPU, then the id."""
    return (running_sandboxes, -free_cpu_millicores, runner_id)


class LoadIndex:
    """Runner ids sorted by :func:`load_key`; each id appears at most once."""

    def __init__(self) -> None:
        self._keys: SortedList[LoadKey] = SortedList()
        self._key_of: dict[str, LoadKey] = {}

    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, runner_id: object) -> bool:
        return runner_id in self._key_of

    def put(self, key: LoadKey) -> None:
        """Insert the runner ``key[2]``, or move it to its new place."""
        runner_id = key[2]
        old = self._key_of.get(runner_id)
        if old == key:
            return
        if old is not None:
            self._keys.remove(old)
        self._keys.add(key)
        self._key_of[runner_id] = key

    def discard(self, runner_id: str) -> None:
        """Remove the runner if present."""
        old = self._key_of.pop(runner_id, None)
        if old is not None:
            self._keys.remove(old)

    def __iter__(self) -> Iterator[str]:
        """Runner ids from the least loaded; do not change the index while iterating."""
        for key in self._keys:
            yield key[2]
