"""The secret formats: what parses, what does not, and that only digests are compared."""

from __future__ import annotations

import pytest

from sandboxd.identity.keyformat import SecretKind, digest, matches, mint, parse


@pytest.mark.parametrize("kind", list(SecretKind))
def test_minted_secrets_parse_back_and_match_their_digest(kind: SecretKind) -> None:
    secret = mint(kind)
    parsed = parse(f"  {secret.text}\n")
    assert parsed == secret
    assert parsed.kind is kind
    assert secret.text.startswith(f"{kind.value}_{secret.public_id}_")
    assert matches(parsed, digest(secret))
    assert not matches(parsed, digest(mint(kind)))
    assert secret.text.split("_", 2)[2] not in repr(secret)  # never printed


def test_two_secrets_never_share_an_id_or_a_digest() -> None:
    secrets = [mint(SecretKind.API_KEY) for _ in range(200)]
    assert len({s.public_id for s in secrets}) == 200
    assert len({digest(s) for s in secrets}) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Bearer sbxk_0123456789abcdef_" + "a" * 43,
        "sbxk_0123456789abcdef_" + "a" * 42,  # secret part too short
        "sbxk_0123456789abcdef_" + "a" * 44,  # too long
        "sbxk_0123456789ABCDEF_" + "a" * 43,  # id must be lower-case hex
        "sbxq_0123456789abcdef_" + "a" * 43,  # unknown kind
        "sbxk_0123456789abcde_" + "a" * 44,  # short id
        "sbxk_0123456789abcdef_" + "a" * 42 + "!",
        "x" * 10_000,
    ],
)
def test_malformed_secrets_do_not_parse(text: str) -> None:
    assert parse(text) is None
