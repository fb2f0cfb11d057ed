"""Start's ``secret_stores``: every malformed reference is refused naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxd.controlplane.secret_refs import references
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError
from sandboxd.secrets.rules import MAX_SECRETS_PER_START, value_problem
from sandboxd.store.secret_store import SecretKey
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import secrets_pb2 as sp


def request(*stores: sp.SecretStoreReference, **env: str) -> g.StartSandboxRequest:
    return g.StartSandboxRequest(
        command="/bin/true", secret_stores=list(stores), environment_variables=env
    )


def ref(store: str, *mappings: tuple[str, str, str]) -> sp.SecretStoreReference:
    return sp.SecretStoreReference(
        store_name=store,
        secrets=[sp.SecretMapping(path=p, field=f, env_var=e) for p, f, e in mappings],
    )


def refused(req: g.StartSandboxRequest) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_start_request(req)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    return caught.value


def test_references_are_parsed_with_env_var_defaulting_to_the_name() -> None:
    parsed = parse_start_request(
        request(ref("main", ("API_TOKEN", "", ""), ("db", "password", "DB_PASSWORD")), X="1")
    )
    assert [(u.key, u.env_var, u.field_path) for u in parsed.secrets] == [
        (SecretKey("main", "API_TOKEN", ""), "API_TOKEN", "secret_stores[0].secrets[0]"),
        (SecretKey("main", "db", "password"), "DB_PASSWORD", "secret_stores[0].secrets[1]"),
    ]
    assert parsed.environment == {"X": "1"}  # the values never join the plain environment
    spec_refs = references(parsed.secrets)
    assert [(r.store_name, r.name, r.field, r.env_var) for r in spec_refs] == [
        ("main", "API_TOKEN", "", "API_TOKEN"),
        ("main", "db", "password", "DB_PASSWORD"),
    ]


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(ref("", ("A", "", ""))), "secret_stores[0].store_name"),
        (request(ref("Bad Store", ("A", "", ""))), "secret_stores[0].store_name"),
        (request(ref("main")), "secret_stores[0].secrets"),
        (request(ref("main", ("ok", "", "OK"), ("", "", "E"))), "secret_stores[0].secrets[1].path"),
        (request(ref("main", ("../x", "", "E"))), "secret_stores[0].secrets[0].path"),
        (request(ref("main", ("a\x00b", "", "E"))), "secret_stores[0].secrets[0].path"),
        (request(ref("main", ("a", "bad field", "E"))), "secret_stores[0].secrets[0].field"),
        (request(ref("main", ("a", "", "1BAD"))), "secret_stores[0].secrets[0].env_var"),
        (request(ref("main", ("a", "", "A=B"))), "secret_stores[0].secrets[0].env_var"),
        # The default env var is the name, which may not be a valid variable name.
        (request(ref("main", ("team/token", "", ""))), "secret_stores[0].secrets[0].env_var"),
        # Two sources for one variable: a secret and the environment, or two secrets.
        (request(ref("main", ("a", "", "HOME_TOKEN")), HOME_TOKEN="x"),
         "secret_stores[0].secrets[0].env_var"),
        (request(ref("main", ("a", "", "T")), ref("other", ("b", "", "T"))),
         "secret_stores[1].secrets[0].env_var"),
    ],
)  # fmt: skip
def test_a_malformed_reference_names_its_field(req: g.StartSandboxRequest, field: str) -> None:
    error = refused(req)
    assert error.metadata["field"] == field, error.message
    assert field in error.message


def test_too_many_secrets_in_one_start_are_refused_before_parsing_them() -> None:
    mappings = [(f"s{i}", "", f"S{i}") for i in range(MAX_SECRETS_PER_START + 1)]
    error = refused(request(ref("main", *mappings)))
    assert error.metadata["field"] == "secret_stores"


def test_value_problems_never_quote_the_value() -> None:
    for value in (b"sekrit\x00", b"sekrit\xff\xfe", b"sekrit" * 20000):
        problem = value_problem(value)
        assert problem is not None and "sekrit" not in problem
    assert value_problem(b"") is None
    assert value_problem("pässwörd".encode()) is None


def v1_create(*stores: tuple[str, tuple[str, str, str]], **env: str) -> Any:
    from sandboxd_protocol.v1 import sandbox_pb2 as v1

    container = v1.Container(image="python:3.11", command="/bin/true", environment_variables=env)
    for store, (path, field, env_var) in stores:
        mapping = v1.SecretMapping(path=path, field=field, env_var=env_var)
        container.secret_stores.append(v1.SecretStoreReference(store_name=store, secrets=[mapping]))
    spec = v1.SandboxSpec(containers=[container])
    return v1.CreateSandboxRequest(sandbox=v1.Sandbox(spec=spec))


def test_v1_container_secret_stores_are_the_same_references_named_in_v1_terms() -> None:
    from sandboxd.controlplane.v1.create_request import parse_create

    plan = parse_create(v1_create(("main", ("db", "password", "DB_PASSWORD"))))
    (use,) = plan.request.secrets
    assert (use.key, use.env_var) == (SecretKey("main", "db", "password"), "DB_PASSWORD")
    assert use.field_path == "spec.containers[0].secret_stores[0].secrets[0]"
    at = "spec.containers[0].secret_stores"
    for request, field in (
        (v1_create(("Bad Store", ("a", "", "A"))), f"{at}[0].store_name"),
        (v1_create(("main", ("../x", "", "A"))), f"{at}[0].secrets[0].path"),
        (v1_create(("main", ("a", "", "HOME")), HOME="x"), f"{at}[0].secrets[0].env_var"),
        (v1_create(("main", ("a", "", "T")), ("b", ("c", "", "T"))), f"{at}[1].secrets[0].env_var"),
    ):
        with pytest.raises(ApiError) as caught:
            parse_create(request)
        assert caught.value.metadata["field"] == field, caught.value.message
