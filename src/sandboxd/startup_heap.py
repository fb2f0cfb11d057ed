"""What a server made while starting is kept out of the garbage collector's full passes.

Why: a server imports gRPC, protobuf, SQLAlchemy, Starlette and more, and builds its services,
tables and caches before it serves: over 100,000 objects (136,000 in ``sandboxd up``) that
live as long as the process. They end up in the collector's oldest generation, and every
full collection walks all of them with the event loop stopped. Measured in ``sandboxd up``
on the 2-core VM: such a pass took 86-90 ms and came about once in one and a half bursts of
100 creates, once in the middle of one, holding every create and exec in flight. Frozen
after start-up (``gc.freeze``), they are skipped, and the same full pass took 3 ms.

A frozen object is never collected. Whatever is already garbage (cycles left by imports and
start-up) is collected first; an object made at start-up and dropped later is still freed
when its reference count reaches zero, and only a cycle of such objects would be kept.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_startup_objects"]

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect, then move every tracked object out of the collector's reach; how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d objects made at start-up are left out of garbage collection passes", frozen)
    return frozen
