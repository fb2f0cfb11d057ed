"""A bounded memory of ids seen recently, for making repeated commands harmless.

Why bounded: the runner lives for months and sees millions of exec streams; a duplicate
command only ever arrives seconds after the original (a resend after a reconnect), so the
last few thousand ids are enough, in constant memory.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """Remembers the last ``size`` ids; :meth:`seen` says whether one came before."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, identifier: str) -> bool:
        """True if ``identifier`` was seen among the last ``size``; records it either way."""
        if identifier in self._ids:
            self._ids.move_to_end(identifier)
            return True
        self._ids[identifier] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
