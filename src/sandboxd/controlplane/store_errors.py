"""What callers hear when the control plane's database fails them: UNAVAILABLE, retryable.

Why one module: sandbox records and identity (API keys, runner credentials) both sit on the
database, and a caller must get the same answer whichever of them the outage hit — never a
driver's exception (which would reach gRPC as UNKNOWN), and never the driver's message, which
names the database's address: that goes to the control plane's log only.
"""

from __future__ import annotations

import logging

import grpc

from sandboxd.errors import ApiError

log = logging.getLogger(__name__)

DB_CALL_SECONDS = 10.0
"""A database call slower than this answers the caller UNAVAILABLE (the call itself goes on)."""
STORE_UNAVAILABLE = "CWSANDBOX_STORE_UNAVAILABLE"


def store_too_slow(what: str, seconds: float = DB_CALL_SECONDS) -> ApiError:
    """A database call outlived its deadline: retryable; it may still take effect."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        f"the control plane's database did not answer within {seconds:.0f} s ({what}); "
        "try again (retrying is safe)",
        reason=STORE_UNAVAILABLE,
        retry_after_seconds=1.0,
    )


def store_unavailable(exc: BaseException) -> ApiError:
    """The database refused a read or a write: retryable, and nothing was changed.

    The driver's own message is logged, not returned.
    """
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    log.warning("database unavailable: %s", detail[0] if detail else type(exc).__name__)
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        "the control plane's database is unavailable; nothing was changed, try again",
        reason=STORE_UNAVAILABLE,
        retry_after_seconds=1.0,
    )
