"""Authentication and credential management as the control plane does them (real SQLite)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from sandboxd.controlplane.caller import JoiningRunner, RunnerCaller
from sandboxd.controlplane.identity_service import IdentityService
from sandboxd.errors import ApiError
from sandboxd.identity.keyformat import SecretKind, mint
from sandboxd.identity.model import ADMIN_ORG, Role
from sandboxd.store import Store

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, clock: Clock) -> IdentityService:
    return IdentityService(Store.sqlite(tmp_path / "cp.db").identity, clock=clock)


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def refused(awaitable: Awaitable[object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(awaitable)
    return caught.value


def test_a_key_authenticates_as_its_organization_and_role(service: IdentityService) -> None:
    key, secret = run(service.create_key("team-a", Role.MEMBER, "ci"))
    caller = run(service.authenticate_key(secret))
    assert (caller.key_id, caller.organization, caller.role) == (key.key_id, "team-a", Role.MEMBER)
    assert not caller.is_admin and caller.can_see("team-a") and not caller.can_see("team-b")


def test_revocation_applies_to_the_next_call_even_with_the_key_cached(
    service: IdentityService,
) -> None:
    key, secret = run(service.create_key("team-a", Role.ADMIN))
    run(service.authenticate_key(secret))  # now cached
    run(service.revoke_key(key.key_id))
    error = refused(service.authenticate_key(secret))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert f"API key {key.key_id} was revoked" in error.message


def test_a_revocation_by_another_control_plane_arrives_within_the_cache_time(
    tmp_path: Path, clock: Clock
) -> None:
    store = Store.sqlite(tmp_path / "shared.db").identity
    here, there = IdentityService(store, clock=clock), IdentityService(store, clock=clock)
    key, secret = run(here.create_key("team-a", Role.MEMBER))
    run(here.authenticate_key(secret))
    run(there.revoke_key(key.key_id))
    run(here.authenticate_key(secret))  # still cached here
    clock.now += 6
    assert "revoked" in refused(here.authenticate_key(secret)).message


@pytest.mark.parametrize(
    ("bearer", "problem"),
    [
        (None, "missing API key"),
        ("   ", "missing API key"),
        ("hunter2", "malformed API key"),
        ("sbxk_0123456789abcdef_" + "A" * 43, "API key not recognised"),
    ],
)
def test_bad_keys_say_what_is_wrong(
    service: IdentityService, bearer: str | None, problem: str
) -> None:
    error = refused(service.authenticate_key(bearer))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "CWSANDBOX_AUTH_EXPIRED"
    assert problem in error.message and "CWSANDBOX_API_KEY" in error.message


def test_a_right_id_with_a_wrong_secret_is_not_recognised(service: IdentityService) -> None:
    _, secret = run(service.create_key("team-a", Role.MEMBER))
    forged = secret[: len("sbxk_0123456789abcdef_")] + "B" * 43
    assert "not recognised" in refused(service.authenticate_key(forged)).message


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.create_key("", Role.MEMBER), "organization"),
        (lambda s: s.create_key("Team A", Role.MEMBER), "organization"),
        (lambda s: s.create_key("-x", Role.MEMBER), "organization"),
        (lambda s: s.create_key("team", Role.MEMBER, "two\nlines"), "name"),
        (lambda s: s.create_key("team", Role.MEMBER, "n" * 101), "name"),
        (lambda s: s.list_keys("Bad Org", False), "organization"),
        (lambda s: s.revoke_key("not-an-id"), "key_id"),
        (lambda s: s.create_join_token(max_uses=0), "max_uses"),
        (lambda s: s.create_join_token(max_uses=10_001), "max_uses"),
        (lambda s: s.create_join_token(ttl_seconds=0), "ttl_seconds"),
        (lambda s: s.create_join_token(ttl_seconds=10**9), "ttl_seconds"),
        (lambda s: s.create_join_token(runner_id="bad id"), "runner_id"),
        (lambda s: s.create_join_token(runner_group_id="-"), "runner_group_id"),
        (lambda s: s.revoke_join_token("x"), "token_id"),
        (lambda s: s.revoke_runner("bad/id"), "runner_id"),
    ],
)
def test_bad_input_names_the_field(service: IdentityService, call: object, field: str) -> None:
    error = refused(call(service))  # type: ignore[operator]
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == [field]
    assert field in error.message


def test_unknown_ids_are_not_found(service: IdentityService) -> None:
    for awaitable in (
        service.revoke_key("0123456789abcdef"),
        service.revoke_join_token("0123456789abcdef"),
        service.revoke_runner("nobody"),
    ):
        assert refused(awaitable).code is grpc.StatusCode.NOT_FOUND


def test_a_runner_joins_once_then_uses_its_credential(service: IdentityService) -> None:
    token, token_secret = run(service.create_join_token(runner_group_id="gpu", max_uses=1))
    joining = run(service.authenticate_runner(token_secret, allow_join=True))
    assert isinstance(joining, JoiningRunner) and joining.token.token_id == token.token_id
    # Join tokens open only the registration call.
    assert (
        "not a runner credential"
        in refused(service.authenticate_runner(token_secret, allow_join=False)).message
    )
    credential, secret = run(service.join(joining.token, "alpha", "ignored-group"))
    assert credential.runner_group_id == "gpu"  # the token fixes the group
    caller = run(service.authenticate_runner(secret, allow_join=False))
    assert caller == RunnerCaller("alpha", credential.credential_id, "gpu")
    # The token is spent: presenting it again fails before any message is read.
    assert "used up" in refused(service.authenticate_runner(token_secret, allow_join=True)).message


def test_a_second_runner_cannot_claim_a_registered_id(service: IdentityService) -> None:
    _, first = run(service.create_join_token())
    _, second = run(service.create_join_token())
    join_first = run(service.authenticate_runner(first, allow_join=True))
    join_second = run(service.authenticate_runner(second, allow_join=True))
    assert isinstance(join_first, JoiningRunner) and isinstance(join_second, JoiningRunner)
    run(service.join(join_first.token, "alpha", "default"))
    error = refused(service.join(join_second.token, "alpha", "default"))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "CWSANDBOX_RUNNER_ID_TAKEN"


def test_a_runner_may_propose_the_credential_it_stored_before_joining(
    service: IdentityService,
) -> None:
    """The control plane binds the proposal itself (so a runner that dies before hearing the
    answer already holds it); a malformed proposal, or one of another kind, is refused and
    names the field; one reusing another runner's credential id is refused and that runner
    keeps its credential."""
    proposal = mint(SecretKind.RUNNER_CREDENTIAL)
    _, token_secret = run(service.create_join_token(max_uses=10))
    joining = run(service.authenticate_runner(token_secret, allow_join=True))
    assert isinstance(joining, JoiningRunner)
    credential, secret = run(service.join(joining.token, "alpha", "default", proposal.text))
    assert (secret, credential.credential_id) == (proposal.text, proposal.public_id)
    caller = run(service.authenticate_runner(proposal.text, allow_join=False))
    assert caller == RunnerCaller("alpha", proposal.public_id, "")
    for bad in ("sbxr_not-a-credential", mint(SecretKind.API_KEY).text, "x" * 200):
        error = refused(service.join(joining.token, "beta", "default", bad))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "sandboxd-proposed-credential" in error.message
    # The same join again (its answer was lost): the same binding, no use of the token spent.
    tokens_before = {t.token_id: t.uses for t in run(service.list_join_tokens(True))}
    again, again_secret = run(service.join(joining.token, "alpha", "default", proposal.text))
    assert (again.credential_id, again_secret) == (proposal.public_id, proposal.text)
    assert {t.token_id: t.uses for t in run(service.list_join_tokens(True))} == tokens_before
    other = mint(SecretKind.RUNNER_CREDENTIAL).text  # a different proposal is another runner
    assert refused(service.join(joining.token, "alpha", "default", other)).code is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Another runner's credential id (shown in refusals and listings) with a secret of its own.
    stolen_id = f"sbxr_{proposal.public_id}_{mint(SecretKind.RUNNER_CREDENTIAL).text[-43:]}"
    error = refused(service.join(joining.token, "mallory", "default", stolen_id))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert run(service.authenticate_runner(proposal.text, allow_join=False)) == caller
    stolen = refused(service.authenticate_runner(stolen_id, allow_join=False))
    assert stolen.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_runner_credential_is_refused_at_once(service: IdentityService) -> None:
    _, token_secret = run(service.create_join_token())
    joining = run(service.authenticate_runner(token_secret, allow_join=True))
    assert isinstance(joining, JoiningRunner)
    _, secret = run(service.join(joining.token, "alpha", "default"))
    run(service.authenticate_runner(secret, allow_join=True))  # cached
    run(service.revoke_runner("alpha"))
    error = refused(service.authenticate_runner(secret, allow_join=True))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED and "revoked" in error.message


def test_the_first_administrator_key_is_created_once_in_a_0600_file(
    service: IdentityService, tmp_path: Path
) -> None:
    secret = service.ensure_admin_key(tmp_path)
    path = tmp_path / "admin-key"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert service.ensure_admin_key(tmp_path) == secret
    caller = run(service.authenticate_key(secret))
    assert (caller.organization, caller.role) == (ADMIN_ORG, Role.ADMIN)
    # A revoked (or foreign) key in the file is replaced by a working one.
    run(service.revoke_key(caller.key_id))
    replaced = service.ensure_admin_key(tmp_path)
    assert replaced != secret
    assert run(service.authenticate_key(replaced)).role is Role.ADMIN
