"""Call metadata by which our client and this server agree on more than v1beta2 says.

Why metadata: the public messages stay as the official clients know them; a server that
does not know a header ignores it, and our client uses a feature only where the server
offered it (:data:`FEATURES_HEADER` on Start's answer), so it works against either.
"""

from __future__ import annotations

__all__ = [
    "EXEC_WAITS_FEATURE",
    "FEATURES_HEADER",
    "SANDBOX_HEADER",
    "START_FEATURES",
    "WAIT_RUNNING_HEADER",
]

WAIT_RUNNING_HEADER = "sandboxd-exec-wait-running"
"""Call metadata (value ``1``) of an exec sent right after Start: a sandbox still being
created is waited for (until it runs or ends, at most its start deadline) instead of refused.

Why: a create used to cost the client a Get, held until RUNNING, and then a second call for
the exec; with the exec itself waiting, the command starts the moment the sandbox runs.
Without stdin it goes to the runner at once and waits there (``OpenExec.wait_start``);
with stdin the control plane waits, so that ``ready`` never comes before the sandbox runs.
Our client sends it only where Start's trailing metadata offered it
(:data:`FEATURES_HEADER`)."""
SANDBOX_HEADER = "sandboxd-sandbox-bin"
"""Initial metadata of an exec that waited, once its command was handed to the running
sandbox: the sandbox as Get would answer it, serialized (``GetSandboxResponse``). An exec
answered without it ran nothing (the sandbox failed or went away), and the client asks Get;
so it is never left out once the command ran."""
FEATURES_HEADER = "sandboxd-features"
"""Trailing metadata of Start: what this server offers beyond v1beta2 (comma-separated)."""
EXEC_WAITS_FEATURE = "exec-waits-running"
START_FEATURES = ((FEATURES_HEADER, EXEC_WAITS_FEATURE),)
"""Start's trailing metadata."""
