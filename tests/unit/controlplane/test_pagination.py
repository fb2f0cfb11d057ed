"""Page tokens: round trip, tamper detection and filter binding."""

from __future__ import annotations

import grpc
import pytest

from sandboxd.controlplane.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
)
from sandboxd.errors import ApiError


def test_round_trip() -> None:
    fp = filter_fingerprint(("east", "", True))
    assert decode_token(encode_token("runner-7", fp), fp) == "runner-7"
    assert decode_token("", fp) == ""


def test_token_bound_to_filters() -> None:
    token = encode_token("a", filter_fingerprint(("east",)))
    with pytest.raises(ApiError) as caught:
        decode_token(token, filter_fingerprint(("west",)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.violations] == ["page_token"]


@pytest.mark.parametrize("token", ["%%%", "bm90IGpzb24", "W10", "eyJhIjoxLCJmIjoiIn0"])
def test_malformed_tokens_name_the_field(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_token(token, filter_fingerprint(()))
    assert "page_token" in caught.value.message


def test_page_sizes() -> None:
    assert page_size_of(0) == DEFAULT_PAGE_SIZE
    assert page_size_of(5) == 5
    assert page_size_of(10**6) == MAX_PAGE_SIZE
    with pytest.raises(ApiError) as caught:
        page_size_of(-1)
    assert "page_size" in caught.value.message
