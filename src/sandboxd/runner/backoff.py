"""Jittered exponential backoff for redialling the control plane.

Why jitter: after a control-plane restart every runner notices at the same moment; without
jitter they would all redial in lock-step and keep hitting it together.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``minimum`` up to ``maximum``, each drawn from [base/2, base].

    Never below ``minimum`` nor above ``maximum``. :meth:`reset` after a healthy session so a
    runner that was connected for hours redials quickly when the link drops once.
    """

    def __init__(self, minimum: float, maximum: float, *, rng: random.Random | None = None) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        base = min(self.maximum, self.minimum * (2.0 ** min(self._attempt, 32)))
        self._attempt += 1
        return max(self.minimum, self._rng.uniform(base / 2, base))

    def reset(self) -> None:
        """Start again from ``minimum``."""
        self._attempt = 0
