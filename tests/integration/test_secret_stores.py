"""Secret stores on a real ``sandboxd controlplane``, on SQLite and on PostgreSQL.

Through raw gRPC (``SecretStoreService`` and the admin secret RPCs), as clients and
operators reach them: CRUD with pagination; another organization's store answering exactly
like a missing one on every RPC; members reading but not managing; names and bounds refused
before anything is stored; values encrypted in the database (the SQLite file and the
PostgreSQL server's own files are read raw and hold no value in any encoding); and a key
that is unsafe, missing or wrong stopping the control plane in one line.
"""

from __future__ import annotations

import functools
import json
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxd.secrets.rules import (
    MAX_SECRETS_PER_STORE,
    MAX_STORES_PER_ORGANIZATION,
    MAX_VALUE_BYTES,
)
from sandboxd_protocol.v1beta2 import secrets_pb2 as sp
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.processes import SANDBOXD, ControlPlaneProcess, child_env
from tests.support.secret_api import SecretsApi, error_of, files_containing, marker, status_of

EXIT_DATABASE = 4


@dataclass
class Org:
    admin: SecretsApi
    member: SecretsApi


@dataclass
class Plane:
    control_plane: ControlPlaneProcess
    acme: Org
    globex: Org

    def org(self, name: str) -> Org:
        cp = self.control_plane
        return Org(
            SecretsApi(cp.channel(cp.create_key(name, "admin"))),
            SecretsApi(cp.channel(cp.create_key(name, "member"))),
        )


@pytest.fixture
def plane(database_url: str, tmp_path: Path) -> Iterator[Plane]:
    cp = ControlPlaneProcess(tmp_path / "cp", database_url=database_url)
    cp.start()
    try:
        acme = Org(
            SecretsApi(cp.channel(cp.create_key("acme", "admin"))),
            SecretsApi(cp.channel(cp.create_key("acme", "member"))),
        )
        globex = Org(
            SecretsApi(cp.channel(cp.create_key("globex", "admin"))),
            SecretsApi(cp.channel(cp.create_key("globex", "member"))),
        )
        yield Plane(cp, acme, globex)
    finally:
        if cp.proc is not None and cp.proc.popen.poll() is None:
            cp.stop()


def test_create_get_list_pages_and_delete(plane: Plane) -> None:
    api = plane.acme.admin
    names = [f"store-{i:02d}" for i in range(17)]
    for name in reversed(names):
        created = api.create(name)
        assert created.name == name and created.organization_id == "acme"
        assert created.provider_type == sp.SECRET_STORE_PROVIDER_TYPE_UNSPECIFIED
        assert created.id and created.created_at.seconds > 0
    got = api.get("store-03")
    assert (got.id, got.name) == (api.get("store-03").id, "store-03")
    assert api.names() == names  # name order, across pages of 7
    first = api.list(page_size=7)
    assert len(first.secret_stores) == 7 and first.next_page_token
    last = api.list(page_size=17)
    assert len(last.secret_stores) == 17 and last.next_page_token == ""  # no empty last page
    assert plane.acme.member.names() == names  # members read them

    api.delete("store-05")
    code, message, meta, _ = status_of(error_of(lambda: api.get("store-05")))
    assert (code, meta["reason"]) == ("NOT_FOUND", "CWSANDBOX_SECRET_STORE_NOT_FOUND"), message
    assert "store-05" not in api.names()
    api.create("store-05")  # the name is free again

    code, _, _, fields = status_of(error_of(lambda: api.list(page_token="garbage!")))
    assert (code, fields) == ("INVALID_ARGUMENT", ["page_token"])
    code, _, _, fields = status_of(error_of(lambda: api.list(page_size=-1)))
    assert (code, fields) == ("INVALID_ARGUMENT", ["page_size"])
    # A token is the caller's organization's: another organization cannot page with it.
    code, _, _, fields = status_of(
        error_of(lambda: plane.globex.admin.list(page_size=7, page_token=first.next_page_token))
    )
    assert (code, fields) == ("INVALID_ARGUMENT", ["page_token"])


def _same_apart_from(
    a: tuple[object, ...], b: tuple[object, ...], name_a: str, name_b: str
) -> None:
    assert repr(a).replace(name_a, "NAME") == repr(b).replace(name_b, "NAME")


def test_another_organizations_store_looks_exactly_like_a_missing_one(plane: Plane) -> None:
    theirs, never = "globex-vault", "nothere-vault"  # same length: messages compare whole
    plane.globex.admin.create(theirs)
    value = marker()
    plane.globex.admin.put(theirs, "token", value)
    acme = plane.acme.admin
    calls: dict[str, Callable[[str], object]] = {
        "GetSecretStore": acme.get,
        "DeleteSecretStore": acme.delete,
        "PutSecret": lambda name: acme.put(name, "token", b"overwritten"),
        "DeleteSecret": lambda name: acme.delete_value(name, "token"),
        "ListSecrets": acme.values,
    }
    for method, call in calls.items():
        foreign = status_of(error_of(functools.partial(call, theirs)))
        missing = status_of(error_of(functools.partial(call, never)))
        assert foreign[0] == "NOT_FOUND", (method, foreign)
        _same_apart_from(foreign, missing, theirs, never)
        assert value.decode() not in repr(foreign)
    assert theirs not in acme.names()
    # Nothing of theirs changed, and each organization has its own name space.
    assert [e.name for e in plane.globex.admin.values(theirs)] == ["token"]
    assert plane.globex.admin.values(theirs)[0].size_bytes == len(value)
    acme.create(theirs)
    assert acme.get(theirs).id != plane.globex.admin.get(theirs).id
    assert acme.values(theirs) == []


def test_members_read_stores_but_only_admins_manage_them(plane: Plane) -> None:
    plane.acme.admin.create("team")
    member = plane.acme.member
    assert member.get("team").name == "team"
    for call in (
        lambda: member.create("mine"),
        lambda: member.delete("team"),
        lambda: member.put("team", "token", b"x"),
        lambda: member.values("team"),
    ):
        code, message, meta, _ = status_of(error_of(call))
        assert (code, meta["reason"]) == ("PERMISSION_DENIED", "CWSANDBOX_ADMIN_ROLE_REQUIRED")
        assert "role admin" in message
    assert plane.acme.admin.names() == ["team"]


@pytest.mark.parametrize(
    ("create", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "Upper"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "ok", "provider_type": 7}, "provider_type"),
        ({"name": "ok", "wandb": sp.WandBStoreConfig(team="t")}, "wandb"),
    ],
)
def test_bad_store_requests_name_their_field(
    plane: Plane, create: dict[str, object], field: str
) -> None:
    code, message, meta, fields = status_of(error_of(lambda: plane.acme.admin.create(**create)))  # type: ignore[arg-type]
    assert (code, fields, meta["field"]) == ("INVALID_ARGUMENT", [field], field), message
    assert plane.acme.admin.names() == []


def test_wandb_stores_are_refused_as_not_implemented(plane: Plane) -> None:
    error = error_of(
        lambda: plane.acme.admin.create("wb", provider_type=sp.SECRET_STORE_PROVIDER_TYPE_WANDB)
    )
    code, _, meta, _ = status_of(error)
    assert (code, meta["reason"], meta["field"]) == (
        "UNIMPLEMENTED", "CWSANDBOX_NOT_IMPLEMENTED", "provider_type",
    )  # fmt: skip
    assert plane.acme.admin.names() == []


def test_bad_values_and_names_are_refused_and_nothing_stored_is_lost(plane: Plane) -> None:
    api = plane.acme.admin
    api.create("main")
    kept = marker()
    api.put("main", "token", kept)
    for args, field in [
        (("main", "token", b"x" * (MAX_VALUE_BYTES + 1)), "value"),
        (("main", "token", b"nul\x00inside"), "value"),
        (("main", "token", b"\xff\xfe not utf-8"), "value"),
        (("main", "", b"x"), "name"),
        (("main", "../up", b"x"), "name"),
        (("main", "token", b"x", "bad field"), "field"),
        (("Bad", "token", b"x"), "store_name"),
    ]:
        code, message, _, fields = status_of(error_of(functools.partial(api.put, *args)))
        assert (code, fields) == ("INVALID_ARGUMENT", [field]), message
        assert "nul" not in message and "xxxx" not in message  # never the value
    assert [(e.name, e.size_bytes) for e in api.values("main")] == [("token", len(kept))]
    code, _, meta, _ = status_of(error_of(lambda: api.create("main")))
    assert (code, meta["reason"]) == ("ALREADY_EXISTS", "CWSANDBOX_SECRET_STORE_EXISTS")
    assert [(e.name, e.size_bytes) for e in api.values("main")] == [("token", len(kept))]


def test_counts_are_bounded_before_anything_is_stored(plane: Plane) -> None:
    api = plane.acme.admin
    api.create("full")
    for i in range(MAX_SECRETS_PER_STORE):
        api.put("full", "k", b"v", field=f"f{i}")
    api.put("full", "k", b"replaced", field="f0")  # replacing is not adding
    code, message, meta, _ = status_of(
        error_of(lambda: api.put("full", "k", b"v", field="one-more"))
    )
    assert (code, meta["reason"]) == ("RESOURCE_EXHAUSTED", "CWSANDBOX_SECRET_LIMIT_EXCEEDED")
    assert str(MAX_SECRETS_PER_STORE) in message
    assert len(api.values("full")) == MAX_SECRETS_PER_STORE
    for i in range(MAX_STORES_PER_ORGANIZATION - 1):
        api.create(f"s{i}")
    code, _, meta, _ = status_of(error_of(lambda: api.create("too-many")))
    assert (code, meta["reason"]) == ("RESOURCE_EXHAUSTED", "CWSANDBOX_SECRET_LIMIT_EXCEEDED")
    assert len(api.names()) == MAX_STORES_PER_ORGANIZATION
    plane.globex.admin.create("theirs")  # the bound is per organization


def test_values_are_encrypted_in_the_database(
    plane: Plane, database_url: str, request: pytest.FixtureRequest
) -> None:
    api = plane.acme.admin
    api.create("main")
    values = [marker(), marker(), marker()]
    api.put("main", "token", values[0])
    api.put("main", "db", values[1], field="password")
    api.put("main", "token", values[2])  # replaced: neither the old nor the new is readable
    listed = api.values("main")
    assert [(e.name, e.field, e.size_bytes) for e in listed] == [
        ("db", "password", len(values[1])),
        ("token", "", len(values[2])),
    ]
    for raw in (api.raw("GetSecretStore", sp.GetSecretStoreRequest(name="main")),
                api.raw("ListSecretStores", sp.ListSecretStoresRequest())):  # fmt: skip
        assert not any(v in raw for v in values)
    key_file = plane.control_plane.data_dir / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    if database_url.startswith("sqlite"):
        db_file = Path(database_url.removeprefix("sqlite:///"))
        where = db_file.parent / "db-files"  # the database's own files, read raw
        where.mkdir()
        for path in db_file.parent.glob(db_file.name + "*"):
            (where / path.name).write_bytes(path.read_bytes())
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        server.admin("CHECKPOINT")
        where = server.data_dir
        rows = server.admin(
            "SELECT name, field, ciphertext FROM secret_values ORDER BY name",
            database=database_url.rsplit("/", 1)[1],
        )
        assert [(r[0], r[1]) for r in rows] == [("db", "password"), ("token", "")]
        assert not any(v in bytes(r[2]) for r in rows for v in values)
    assert files_containing(where, values) == []
    assert files_containing(where, [key]) == []  # the key is not in the database either


def _controlplane_refuses(cp: ControlPlaneProcess) -> str:
    database = ["--database-url", cp.database_url] if cp.database_url else []
    result = subprocess.run(
        [*SANDBOXD, "controlplane", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(cp.data_dir), *database],
        env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == EXIT_DATABASE, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sandboxd:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_unsafe_missing_or_wrong_key_stops_the_control_plane(plane: Plane) -> None:
    api = plane.acme.admin
    api.create("main")
    api.put("main", "token", marker())
    cp = plane.control_plane
    assert cp.stop() == 0
    key_file = cp.data_dir / "secrets.key"
    good = key_file.read_bytes()

    key_file.chmod(0o644)
    assert "chmod 600" in _controlplane_refuses(cp)
    key_file.chmod(0o600)

    key_file.unlink()
    line = _controlplane_refuses(cp)
    assert "secrets.key is missing" in line and "1 encrypted secret value" in line
    assert not key_file.exists()

    key_file.write_bytes(bytes(32))
    key_file.chmod(0o600)
    assert "not the key that stored them" in _controlplane_refuses(cp)

    key_file.write_bytes(good)
    cp.start()  # the right key: it serves again, with the value readable
    assert [
        e.name for e in SecretsApi(cp.channel(cp.create_key("acme", "admin"))).values("main")
    ] == ["token"]


def _cli(
    cp: ControlPlaneProcess, key: str, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = child_env(CWSANDBOX_BASE_URL=cp.url, CWSANDBOX_API_KEY=key)
    return subprocess.run(
        [*SANDBOXD, "secrets", *args], input=stdin, env=env, capture_output=True, timeout=60
    )


def test_the_cli_manages_stores_and_values_without_ever_printing_one(plane: Plane) -> None:
    cp = plane.control_plane
    admin = cp.create_key("acme", "admin")
    value = marker()
    runs = [
        _cli(cp, admin, "create-store", "ops"),
        _cli(cp, admin, "put", "ops", "API_TOKEN", stdin=value + b"\n"),
        _cli(cp, admin, "put", "ops", "db", "--field", "password", stdin=value),
        _cli(cp, admin, "ls", "ops", "--json"),
        _cli(cp, admin, "stores"),
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert value not in run.stdout + run.stderr
    listed = json.loads(runs[3].stdout)
    assert [(e["name"], e["field"], e["size_bytes"]) for e in listed] == [
        ("API_TOKEN", "", len(value)),  # the trailing newline of `echo` is not kept
        ("db", "password", len(value)),
    ]
    assert b"ops" in runs[4].stdout
    member = _cli(cp, cp.create_key("acme", "member"), "put", "ops", "X", stdin=b"v")
    assert member.returncode == 1 and b"role admin" in member.stderr
    bad = _cli(cp, admin, "put", "ops", "../x", stdin=b"v")
    assert bad.returncode == 2 and b"NAME" in bad.stderr
    assert _cli(cp, admin, "rm", "ops", "API_TOKEN").returncode == 0
    assert _cli(cp, admin, "delete-store", "ops").returncode == 0
    gone = _cli(cp, admin, "ls", "ops")
    assert gone.returncode == 1 and b"secret store 'ops' not found" in gone.stderr
