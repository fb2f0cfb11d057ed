"""Opaque page tokens for every List RPC (v1beta2.md §8).

Why keyset tokens: a token carries the sort key of the last item returned, so the next page
starts with a binary search and stays correct while runners join or leave between pages. The
token also carries a fingerprint of the request's filters; reusing it with other filters is a
client bug we report as INVALID_ARGUMENT on ``page_token`` instead of returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from sandboxd.errors import ApiError, invalid_argument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size_of(requested: int, field: str = "page_size") -> int:
    """Validate a requested page size; 0 means the server default."""
    if requested < 0:
        raise invalid_argument(field, f"must not be negative (got {requested})")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def take_page(items: Iterator[T], size: int, key: Callable[[T], str]) -> tuple[list[T], str]:
    """Take ``size`` items and report the key to continue after, if any item is left.

    Looking one item ahead means the last page never carries a token to an empty page.
    """
    page: list[T] = []
    for item in items:
        if len(page) == size:
            return page, key(page[-1])
        page.append(item)
    return page, ""


def filter_fingerprint(filters: Sequence[object]) -> str:
    """A short stable hash of the request's filter values."""
    return hashlib.sha256(repr(tuple(filters)).encode()).hexdigest()[:12]


def encode_token(after: str, fingerprint: str) -> str:
    """Token for the page that starts after the item with sort key ``after``."""
    payload = json.dumps({"a": after, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_token(token: str, fingerprint: str, field: str = "page_token") -> str:
    """The sort key a token continues after ("" for the first page)."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        after, seen = payload["a"], payload["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _malformed(field) from exc
    if not isinstance(after, str) or not isinstance(seen, str):
        raise _malformed(field)
    if seen != fingerprint:
        raise invalid_argument(
            field, "was issued for a request with different filters; start again without it"
        )
    return after


def _malformed(field: str) -> ApiError:
    return invalid_argument(field, "malformed token; pass back next_page_token unchanged")
