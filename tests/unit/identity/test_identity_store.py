"""The identity tables on a real SQLite file: the rules a join token must follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandboxd.identity.keyformat import SecretKind, digest, mint
from sandboxd.identity.model import (
    ApiKeyInfo,
    JoinRefused,
    JoinTokenInfo,
    Role,
    RunnerCredentialInfo,
)
from sandboxd.store import Store
from sandboxd.store.identity import IdentityStore

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    return Store.sqlite(tmp_path / "cp.db").identity


def token(store: IdentityStore, *, uses: int = 1, runner_id: str = "", ttl: float = 3600) -> str:
    secret = mint(SecretKind.JOIN_TOKEN)
    info = JoinTokenInfo(
        token_id=secret.public_id,
        runner_group_id="",
        runner_id=runner_id,
        max_uses=uses,
        uses=0,
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
    )
    store.add_join_token(info, digest(secret))
    return secret.public_id


def join(store: IdentityStore, token_id: str, runner_id: str, at: datetime = NOW) -> str:
    secret = mint(SecretKind.RUNNER_CREDENTIAL)
    credential = RunnerCredentialInfo(runner_id, secret.public_id, "default", token_id, at)
    store.join_runner(token_id, credential, digest(secret), at)
    return secret.public_id


def test_a_single_use_token_admits_one_runner(store: IdentityStore) -> None:
    once = token(store)
    join(store, once, "alpha")
    with pytest.raises(JoinRefused) as refused:
        join(store, once, "bravo")
    assert refused.value.kind == "token" and "used up" in refused.value.message
    assert [c.runner_id for c in store.runner_credentials()] == ["alpha"]
    found = store.join_token(once)
    assert found is not None and found[0].uses == 1


def test_a_valid_token_cannot_take_over_a_bound_runner_id(store: IdentityStore) -> None:
    many = token(store, uses=10)
    first = join(store, many, "alpha")
    with pytest.raises(JoinRefused) as refused:
        join(store, many, "alpha")
    assert refused.value.kind == "bound"
    assert "sandboxd tokens create --runner-id alpha" in refused.value.message
    # Nothing changed: the original credential stands and the refused try used no token use.
    assert store.runner_credential_by_id(first) is not None
    found = store.join_token(many)
    assert found is not None and found[0].uses == 1


def test_a_revoked_runner_id_stays_blocked_but_a_pinned_token_re_admits_it(
    store: IdentityStore,
) -> None:
    first = join(store, token(store), "alpha")
    revoked = store.revoke_runner("alpha", NOW)
    assert revoked is not None and revoked.revoked_at == NOW
    with pytest.raises(JoinRefused):
        join(store, token(store), "alpha")
    with pytest.raises(JoinRefused) as refused:
        join(store, token(store, runner_id="alpha"), "bravo")
    assert refused.value.kind == "pinned"
    second = join(store, token(store, runner_id="alpha"), "alpha")
    assert store.runner_credential_by_id(first) is None
    found = store.runner_credential_by_id(second)
    assert found is not None and found[0].revoked_at is None


def test_expired_and_revoked_tokens_admit_nobody(store: IdentityStore) -> None:
    expired = token(store, ttl=10)
    with pytest.raises(JoinRefused, match="expired"):
        join(store, expired, "alpha", at=NOW + timedelta(seconds=11))
    revoked = token(store)
    store.revoke_join_token(revoked, NOW)
    with pytest.raises(JoinRefused, match="revoked"):
        join(store, revoked, "alpha")
    with pytest.raises(JoinRefused, match="not known"):
        join(store, "0123456789abcdef", "alpha")
    assert store.runner_credentials(include_revoked=True) == []
    usable = store.join_tokens(NOW + timedelta(seconds=11))
    assert [t.token_id for t in usable] == []
    assert len(store.join_tokens(NOW, include_spent=True)) == 2


def test_api_keys_round_trip_and_revocation_is_kept(store: IdentityStore) -> None:
    secret = mint(SecretKind.API_KEY)
    key = ApiKeyInfo(secret.public_id, "team-a", Role.MEMBER, "ci", NOW)
    store.add_api_key(key, digest(secret))
    assert store.api_key(secret.public_id) == (key, digest(secret))
    assert store.api_keys("team-a") == [key]
    assert store.api_keys("team-b") == []
    first = store.revoke_api_key(secret.public_id, NOW)
    again = store.revoke_api_key(secret.public_id, NOW + timedelta(days=1))
    assert first == again and first is not None and first.revoked_at == NOW
    assert store.api_keys() == []
    assert store.api_keys(include_revoked=True) == [first]
    assert store.revoke_api_key("0123456789abcdef", NOW) is None
