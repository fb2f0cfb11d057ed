"""What a create killed before its sandbox's first record leaves behind, and its removal.

Why: a create claims the sandbox's user-id range (a claim file labelled with its id) and
makes its cgroup before it writes ``record.jsonl``. A runner killed in between leaves a
state directory that ``SandboxRecord.load`` cannot read, so nothing would ever give the
range back: each such kill would shrink the host's pool of ranges for good. No process of
that sandbox can exist yet (the zygote is asked only after the record is written), so the
claim, the empty cgroup and the directory can all go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..errors import BackendError
from .cgroups import CgroupManager
from .userns import IdRangePool

__all__ = ["forget_unrecorded"]


async def forget_unrecorded(
    state_dir: Path, ids: IdRangePool, cgroups: Callable[[], Awaitable[CgroupManager]]
) -> None:
    """Release the id claim labelled with ``state_dir``'s name, its cgroup, then the dir.

    ``cgroups`` gives the backend's cgroup manager (it may fail where there is none; the
    rest is removed then all the same).
    """
    name = state_dir.name
    for claimed in ids.adopt(name):
        ids.release(claimed)
    with contextlib.suppress(BackendError, OSError):
        manager = await cgroups()
        for group in set(manager._group_dirs().values()):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(group, name))  # empty: nothing ever ran in it
    shutil.rmtree(state_dir, ignore_errors=True)
