"""``sandboxd keys|tokens|runners`` against a real control plane, as an operator uses them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result

from sandboxd.cli import main
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.support.processes import SANDBOXD, ControlPlaneProcess, child_env


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    control_plane = ControlPlaneProcess(data_dir=tmp_path_factory.mktemp("admin-cp")).start()
    yield control_plane
    control_plane.stop()


def sandboxd(cp: ControlPlaneProcess, *args: str, key: str | None = None) -> Result:
    env = {"CWSANDBOX_BASE_URL": cp.url, "CWSANDBOX_API_KEY": cp.admin_key if key is None else key}
    return CliRunner().invoke(main, list(args), env=env)


def test_keys_create_prints_only_the_key_and_it_works(cp: ControlPlaneProcess) -> None:
    result = subprocess.run(
        [*SANDBOXD, "keys", "create", "--org", "team-cli", "--name", "laptop"],
        env=child_env(CWSANDBOX_BASE_URL=cp.url, CWSANDBOX_API_KEY=cp.admin_key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and key.startswith("sbxk_")
    assert "member key" in result.stderr and "team-cli" in result.stderr
    with cp.discovery(api_key=key) as client:
        client.list_profiles()  # a member may use the public API

    listed = json.loads(sandboxd(cp, "keys", "ls", "--org", "team-cli", "--json").output)
    assert [(k["key_id"], k["role"], k["name"]) for k in listed] == [
        (key.split("_")[1], "member", "laptop")
    ]
    assert key not in sandboxd(cp, "keys", "ls").output  # listings never show secrets


def test_revoking_a_key_refuses_its_next_call(cp: ControlPlaneProcess) -> None:
    key = sandboxd(cp, "keys", "create", "--org", "team-rev").stdout.strip()
    key_id = key.split("_")[1]
    with cp.discovery(api_key=key) as client:
        client.list_profiles()
    revoked = sandboxd(cp, "keys", "revoke", key_id)
    assert revoked.exit_code == 0 and f"revoked key {key_id}" in revoked.output
    with cp.discovery(api_key=key) as client, pytest.raises(grpc.RpcError) as caught:
        client.list_profiles()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in caught.value.details()
    table = sandboxd(cp, "keys", "ls", "--org", "team-rev", "--all").output
    assert key_id in table and "REVOKED_AT" in table
    assert key_id not in sandboxd(cp, "keys", "ls", "--org", "team-rev").output


def test_members_cannot_administer(cp: ControlPlaneProcess) -> None:
    member = sandboxd(cp, "keys", "create", "--org", "team-m").stdout.strip()
    for args in (
        ("keys", "create", "--org", "team-m", "--role", "admin"),
        ("keys", "ls"),
        ("tokens", "create"),
        ("runners", "ls"),
    ):
        result = sandboxd(cp, *args, key=member)
        assert result.exit_code == 1, args
        assert "needs an API key of role admin" in result.output
        assert result.output.startswith("error: ")
    # An admin key of another organization may administer.
    other_admin = sandboxd(cp, "keys", "create", "--org", "ops", "--role", "admin").stdout
    assert sandboxd(cp, "tokens", "ls", key=other_admin.strip()).exit_code == 0


def test_tokens_create_list_and_revoke(cp: ControlPlaneProcess) -> None:
    result = sandboxd(cp, "tokens", "create", "--group", "gpu", "--uses", "3", "--ttl", "2h")
    token = result.stdout.strip()
    assert token.startswith("sbxj_") and result.exit_code == 0
    token_id = token.split("_")[1]
    listed = {t["token_id"]: t for t in json.loads(sandboxd(cp, "tokens", "ls", "--json").output)}
    assert listed[token_id]["runner_group_id"] == "gpu"
    assert (listed[token_id]["uses"], listed[token_id]["max_uses"]) == (0, 3)
    assert sandboxd(cp, "tokens", "revoke", token_id).exit_code == 0
    assert token_id not in sandboxd(cp, "tokens", "ls").output
    assert token_id in sandboxd(cp, "tokens", "ls", "--all").output


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("keys", "create"), "--org"),
        (("keys", "create", "--org", ""), "--org"),
        (("keys", "create", "--org", "Team A"), "--org"),
        (("keys", "create", "--org", "team", "--role", "owner"), "--role"),
        (("keys", "create", "--org", "team", "--name", "a\nb"), "--name"),
        (("keys", "revoke", "sbxk_not-an-id"), "KEY_ID"),
        (("keys", "ls", "--org", "-bad"), "--org"),
        (("tokens", "create", "--ttl", "0"), "--ttl"),
        (("tokens", "create", "--ttl", "soon"), "--ttl"),
        (("tokens", "create", "--ttl", "400d"), "--ttl"),
        (("tokens", "create", "--uses", "0"), "--uses"),
        (("tokens", "create", "--group", "a b"), "--group"),
        (("tokens", "create", "--runner-id", "-x"), "--runner-id"),
        (("tokens", "revoke", "nope"), "TOKEN_ID"),
        (("runners", "revoke", "bad/id"), "RUNNER_ID"),
    ],
)
def test_bad_input_is_refused_naming_the_option(
    cp: ControlPlaneProcess, args: tuple[str, ...], names: str
) -> None:
    result = sandboxd(cp, *args)
    assert result.exit_code == 2, result.output
    assert names in result.output


def test_without_a_key_or_against_nothing_the_error_is_one_line(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    result = sandboxd(cp, "keys", "ls", key="")
    assert result.exit_code == 1
    assert result.output.startswith("error: set CWSANDBOX_API_KEY")
    wrong = sandboxd(cp, "keys", "ls", key="sbxk_0123456789abcdef_" + "A" * 43)
    assert wrong.exit_code == 1 and "API key not recognised" in wrong.output
    gone = CliRunner().invoke(
        main,
        ["keys", "ls", "--base-url", "http://127.0.0.1:1"],
        env={"CWSANDBOX_API_KEY": cp.admin_key},
    )
    assert gone.exit_code == 1 and "cannot reach the control plane" in gone.output
    assert "Traceback" not in result.output + wrong.output + gone.output
    unknown = sandboxd(cp, "keys", "revoke", "0123456789abcdef")
    assert unknown.exit_code == 1 and "not found" in unknown.output


def test_the_admin_api_names_bad_fields(cp: ControlPlaneProcess) -> None:
    """What the CLI checks, the API checks again (other tools call it directly)."""
    cases = [
        ("CreateApiKey", admin_pb2.CreateApiKeyRequest(organization="t", role=7), "role"),  # type: ignore[arg-type]
        ("CreateApiKey", admin_pb2.CreateApiKeyRequest(organization=""), "organization"),
        ("CreateJoinToken", admin_pb2.CreateJoinTokenRequest(ttl_seconds=-5), "ttl_seconds"),
        ("CreateJoinToken", admin_pb2.CreateJoinTokenRequest(max_uses=-1), "max_uses"),
        ("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id="sbxk_x"), "key_id"),
    ]
    responses = {
        "CreateApiKey": admin_pb2.CreateApiKeyResponse,
        "CreateJoinToken": admin_pb2.CreateJoinTokenResponse,
        "RevokeApiKey": admin_pb2.RevokeApiKeyResponse,
    }
    for method, request, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            cp.admin(method, request, responses[method])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert f"invalid {field}:" in caught.value.details()
