"""The cluster id of the control plane a runner belongs to, kept in its state directory.

Why: a control plane started on an empty or another database must not mistake a runner's
sandboxes for ones it deleted. The runner tells it which cluster it last registered with
(``Register.cluster_id``); a control plane that does not know the runner's sandboxes reports
them as orphans and leaves them running. The id is whatever the control plane said last
(``Registered.cluster_id``), written atomically; a missing or unreadable file means "none".
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

CLUSTER_ID_FILE = "cluster-id"
_VALID = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")


def load_cluster_id(state_dir: Path) -> str:
    """The cluster id stored in ``state_dir``, or "" when there is none (or it is damaged)."""
    try:
        text = (state_dir / CLUSTER_ID_FILE).read_text().strip()
    except OSError:
        return ""
    return text if _VALID.match(text) else ""


def save_cluster_id(state_dir: Path, cluster_id: str) -> None:
    """Remember ``cluster_id`` (atomically; an invalid one is not written)."""
    if not _VALID.match(cluster_id):
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp_name = tempfile.mkstemp(prefix=f".{CLUSTER_ID_FILE}.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(cluster_id + "\n")
        os.replace(temp_name, state_dir / CLUSTER_ID_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
