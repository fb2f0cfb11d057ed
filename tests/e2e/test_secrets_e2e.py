"""Secrets injected into real sandboxes, and found nowhere else (``sandboxd up``, DEBUG logs).

An organization's admin creates a store and puts values; a member starts sandboxes that
refer to them, through our client, through raw gRPC and through the official
``cwsandbox==0.26.2`` client, and ``env`` inside each shows the values. Then the attacks:
references to another organization's store, or to values that do not exist, are refused
naming the field, with the very same answer for both; and no value appears in any read API
(sandboxes, stores, discovery, the admin listing), in any line the control plane or the
runner logged at DEBUG, in the database's files or in the sandbox record kept for
reconciliation (which holds the reference), or in any error message.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cwsandbox import Sandbox, Secret
from sandboxd_protocol.sandboxd_v1 import admin_pb2, runner_pb2
from sandboxd_protocol.v1beta2 import discovery_pb2 as d
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import secrets_pb2 as sp
from tests.e2e.conftest import run_python
from tests.support.official import OFFICIAL_V1_VERSION, official_python
from tests.support.processes import Up, admin_call, all_in_one, child_env, keyed_channel
from tests.support.secret_api import (
    SecretsApi,
    encodings,
    error_of,
    files_containing,
    marker,
    status_of,
)

RUNNER_ID = "secrets-runner"
KEEP_ALIVE = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; sleep infinity & wait']


@dataclass
class World:
    up: Up
    data_dir: Path
    acme_admin: str
    acme_member: str
    globex_admin: str
    globex_member: str
    token: bytes = field(default_factory=marker)
    password: bytes = field(default_factory=marker)
    theirs: bytes = field(default_factory=marker)  # in globex's store
    sandboxes: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.up.base_url.split("://", 1)[1]

    @property
    def values(self) -> list[bytes]:
        return [self.token, self.password, self.theirs]

    def channel(self, key: str) -> grpc.Channel:
        return keyed_channel(self.target, key)

    def start(self, key: str, request: g.StartSandboxRequest) -> g.StartSandboxResponse:
        with self.channel(key) as channel:
            rpc = channel.unary_unary(
                "/coreweave.sandbox.v1beta2.GatewayService/Start",
                request_serializer=g.StartSandboxRequest.SerializeToString,
                response_deserializer=g.StartSandboxResponse.FromString,
            )
            response: g.StartSandboxResponse = rpc(request, timeout=60)
        self.sandboxes.append(response.sandbox_id)
        return response

    def raw(self, key: str, path: str, request: Any) -> bytes:
        with self.channel(key) as channel:
            rpc = channel.unary_unary(
                path, request_serializer=type(request).SerializeToString,
                response_deserializer=lambda raw: raw,
            )  # fmt: skip
            return bytes(rpc(request, timeout=60))


def _key(up: Up, organization: str, role: int) -> str:
    request = admin_pb2.CreateApiKeyRequest(organization=organization, role=role)
    target = up.base_url.split("://", 1)[1]
    response = admin_call(
        target, up.api_key, "CreateApiKey", request, admin_pb2.CreateApiKeyResponse
    )
    return str(response.secret)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("secrets-up")
    with all_in_one(data_dir, "--log-level", "debug", "--runner-id", RUNNER_ID) as up:
        w = World(
            up, data_dir,
            _key(up, "acme", admin_pb2.ROLE_ADMIN), _key(up, "acme", admin_pb2.ROLE_MEMBER),
            _key(up, "globex", admin_pb2.ROLE_ADMIN), _key(up, "globex", admin_pb2.ROLE_MEMBER),
        )  # fmt: skip
        with w.channel(w.acme_admin) as channel:
            acme = SecretsApi(channel)
            acme.create("main")
            acme.put("main", "API_TOKEN", w.token)
            acme.put("main", "db", w.password, field="password")
        with w.channel(w.globex_admin) as channel:
            globex = SecretsApi(channel)
            globex.create("vault")
            globex.put("vault", "API_TOKEN", w.theirs)
        yield w


def _env_lines(text: str | bytes) -> set[str]:
    if isinstance(text, bytes):
        text = text.decode()
    return set(text.splitlines())


def _our_client_env(w: World, monkeypatch: pytest.MonkeyPatch, sandbox_id: str = "") -> str:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", w.up.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", w.acme_member)
    if sandbox_id:
        sb = Sandbox.from_id(sandbox_id).result()
        return str(sb.exec(["env"]).result().stdout)
    sb = Sandbox.run(
        environment_variables={"PLAIN": "visible"},
        secrets=[
            Secret(store="main", name="API_TOKEN"),
            Secret(store="main", name="db", field="password", env_var="DB_PASSWORD"),
        ],
    )
    w.sandboxes.append(sb.sandbox_id)
    sb.wait()
    return str(sb.exec(["env"]).result().stdout)


def test_our_client_injects_secrets_as_environment_variables(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _env_lines(_our_client_env(world, monkeypatch))
    assert f"API_TOKEN={world.token.decode()}" in lines
    assert f"DB_PASSWORD={world.password.decode()}" in lines
    assert "PLAIN=visible" in lines
    assert not any(world.theirs.decode() in line for line in lines)


def _raw_start_request() -> g.StartSandboxRequest:
    return g.StartSandboxRequest(
        command=KEEP_ALIVE[0], args=KEEP_ALIVE[1:], container_image="python:3.11",
        secret_stores=[sp.SecretStoreReference(store_name="main", secrets=[
            sp.SecretMapping(path="db", field="password", env_var="PGPASSWORD"),
            sp.SecretMapping(path="API_TOKEN", env_var="WANDB_API_KEY"),
        ])],
    )  # fmt: skip


def test_raw_grpc_start_injects_secrets(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    response = world.start(world.acme_member, _raw_start_request())
    assert not any(v in response.SerializeToString() for v in world.values)
    lines = _env_lines(_our_client_env(world, monkeypatch, response.sandbox_id))
    assert f"PGPASSWORD={world.password.decode()}" in lines
    assert f"WANDB_API_KEY={world.token.decode()}" in lines


OFFICIAL_SCRIPT = r"""
import json
from cwsandbox import Sandbox, Secret
sb = Sandbox.run(secrets=[Secret(store="main", name="API_TOKEN"),
                          Secret(store="main", name="db", field="password", env_var="DBPW")])
sb.wait()
print(json.dumps({"id": sb.sandbox_id, "env": sb.exec(["env"]).result().stdout}))
"""


@pytest.mark.official
def test_the_official_client_injects_secrets(world: World, official: Path) -> None:
    out = json.loads(
        run_python(
            official,
            OFFICIAL_SCRIPT,
            child_env(CWSANDBOX_BASE_URL=world.up.base_url, CWSANDBOX_API_KEY=world.acme_member),
        )
    )
    world.sandboxes.append(out["id"])
    lines = _env_lines(out["env"])
    assert f"API_TOKEN={world.token.decode()}" in lines
    assert f"DBPW={world.password.decode()}" in lines


V1_SCRIPT = r"""
import json
from cwsandbox import Sandbox, Secret
sb = Sandbox.run(secrets=[Secret(store="main", name="API_TOKEN"),
                          Secret(store="main", name="db", field="password", env_var="DBPW")])
sb.wait()
out = {"id": sb.sandbox_id, "env": sb.exec(["env"]).result().stdout}
try:
    Sandbox.run(secrets=[Secret(store="vault", name="API_TOKEN")]).wait()
except Exception as error:  # globex's store: refused like a missing one
    out["refused"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
"""


@pytest.mark.official
def test_the_official_v1_client_injects_secrets_and_is_refused_foreign_ones(world: World) -> None:
    """1.22.0 sends them as ``spec.containers[0].secret_stores`` (coreweave.sandbox.v1)."""
    out = json.loads(
        run_python(
            official_python(OFFICIAL_V1_VERSION),
            V1_SCRIPT,
            child_env(CWSANDBOX_BASE_URL=world.up.base_url, CWSANDBOX_API_KEY=world.acme_member),
        )
    )
    world.sandboxes.append(out["id"])
    lines = _env_lines(out["env"])
    assert f"API_TOKEN={world.token.decode()}" in lines
    assert f"DBPW={world.password.decode()}" in lines
    assert not any(world.theirs.decode() in line for line in lines)
    assert "spec.containers[0].secret_stores[0].store_name" in out["refused"], out["refused"]
    assert world.theirs.decode() not in out["refused"]


def _start_refusal(
    world: World, key: str, *mappings: sp.SecretStoreReference, **env: str
) -> tuple[Any, ...]:
    request = g.StartSandboxRequest(
        command="/bin/true", secret_stores=list(mappings), environment_variables=env
    )
    return status_of(error_of(functools.partial(world.start, key, request)))


def _listed(world: World, key: str) -> set[str]:
    with world.channel(key) as channel:
        rpc = channel.unary_unary(
            "/coreweave.sandbox.v1beta2.GatewayService/List",
            request_serializer=g.ListSandboxesRequest.SerializeToString,
            response_deserializer=g.ListSandboxesResponse.FromString,
        )
        return {s.sandbox_id for s in rpc(g.ListSandboxesRequest(), timeout=30).sandboxes}


def test_foreign_and_missing_secrets_are_refused_alike_naming_the_field(world: World) -> None:
    before = _listed(world, world.acme_admin)
    ref = sp.SecretStoreReference
    # acme's member asks for globex's store "vault", and for a store that exists nowhere.
    foreign = _start_refusal(
        world,
        world.acme_member,
        ref(store_name="vault", secrets=[sp.SecretMapping(path="API_TOKEN")]),
    )
    missing = _start_refusal(
        world,
        world.acme_member,
        ref(store_name="vaulx", secrets=[sp.SecretMapping(path="API_TOKEN")]),
    )
    assert foreign[0] == "INVALID_ARGUMENT" and foreign[3] == ["secret_stores[0].store_name"], (
        foreign
    )
    assert repr(foreign).replace("vault", "NAME") == repr(missing).replace("vaulx", "NAME")
    # globex's member asks for a value acme has: the same, from the other side.
    other = _start_refusal(
        world,
        world.globex_member,
        ref(store_name="main", secrets=[sp.SecretMapping(path="API_TOKEN")]),
    )
    assert other[0] == "INVALID_ARGUMENT" and other[3] == ["secret_stores[0].store_name"], other

    first = "secret_stores[0].secrets[0]"
    cases = [
        (one("main", "NOPE"), {}, f"{first}.path"),
        (one("main", "db", "user", "U"), {}, f"{first}.path"),
        (one("main", "API_TOKEN"), {"API_TOKEN": "x"}, f"{first}.env_var"),
        (one("main", "db", "", "9"), {}, f"{first}.env_var"),
    ]
    for mapping, env, field_path in cases:
        code, message, meta, fields = _start_refusal(world, world.acme_member, mapping, **env)
        assert (code, fields, meta["field"]) == ("INVALID_ARGUMENT", [field_path], field_path), (
            message
        )
        assert not any(v.decode() in message for v in world.values)
    assert _listed(world, world.acme_admin) == before  # nothing was recorded or reserved


def one(store: str, path: str, field: str = "", env_var: str = "") -> sp.SecretStoreReference:
    """A reference to one secret of one store."""
    mapping = sp.SecretMapping(path=path, field=field, env_var=env_var)
    return sp.SecretStoreReference(store_name=store, secrets=[mapping])


def _sandbox_specs(world: World) -> dict[str, runner_pb2.SandboxSpec]:
    db = world.data_dir / "controlplane.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT sandbox_id, spec FROM sandboxes").fetchall()
    return {sid: runner_pb2.SandboxSpec.FromString(spec) for sid, spec in rows if spec}


def test_values_appear_nowhere_but_inside_the_sandboxes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    if len(world.sandboxes) < 2:  # the injection tests ran on another worker (xdist)
        _our_client_env(world, monkeypatch)
        world.start(world.acme_member, _raw_start_request())
    assert len(world.sandboxes) >= 2
    values = world.values
    # Read APIs: sandboxes (as the member and as the platform admin), stores, discovery.
    gateway = "/coreweave.sandbox.v1beta2.GatewayService/"
    for key in (world.acme_member, world.up.api_key):
        answers = [world.raw(key, gateway + "List", g.ListSandboxesRequest())]
        answers += [
            world.raw(key, gateway + "Get", g.GetSandboxRequest(sandbox_id=sid))
            for sid in world.sandboxes
        ]
        answers += [
            world.raw(key, "/coreweave.sandbox.v1beta2.DiscoveryService/ListAvailableRunners",
                      d.ListAvailableRunnersRequest(view=d.RUNNER_VIEW_FULL)),
            world.raw(key, "/coreweave.sandbox.v1beta2.DiscoveryService/ListProfiles",
                      d.ListProfilesRequest()),
        ]  # fmt: skip
        for answer in answers:
            assert not any(form in answer for v in values for form in encodings(v))
    store_api = "/coreweave.sandbox.v1beta2.SecretStoreService/"
    for answer in (
        world.raw(
            world.acme_admin, store_api + "GetSecretStore", sp.GetSecretStoreRequest(name="main")
        ),
        world.raw(world.acme_member, store_api + "ListSecretStores", sp.ListSecretStoresRequest()),
        world.raw(world.acme_admin, "/sandboxd.admin.v1.AdminService/ListSecrets",
                  admin_pb2.ListSecretsRequest(store_name="main")),
    ):  # fmt: skip
        assert not any(form in answer for v in values for form in encodings(v))
    # The record kept for reconciliation holds references, never values.
    specs = _sandbox_specs(world)
    for sid in world.sandboxes:
        spec = specs[sid]
        assert spec.secret_references and not spec.secret_environment
        assert {r.store_name for r in spec.secret_references} == {"main"}
    # Every file of the platform, read raw: the database (SQLite: the file, its WAL and
    # shared memory), the runner's and the backend's records of each sandbox, its state.
    # Not the images, nor the sparse disk templates (GiBs of zeros no value was written to).
    assert list(world.data_dir.glob("controlplane.db*"))
    assert list((world.data_dir / "runner" / "sandboxes").glob("*.jsonl"))
    assert list((world.data_dir / "backend" / "sandboxes").glob("*/record.jsonl"))

    def skip(path: Path) -> bool:
        return path.suffix == ".img" or "images" in path.relative_to(world.data_dir).parts

    assert files_containing(world.data_dir, values, skip) == []
    # Every line the control plane and the runner logged, at DEBUG.
    output = world.up.proc.output
    assert "DEBUG" in output or "debug" in output.lower()
    for value in values:
        for form in encodings(value):
            assert form.decode() not in output
