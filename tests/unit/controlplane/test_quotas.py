"""Per-organization quotas: configuration, merging with the default, and refusals."""

from __future__ import annotations

import grpc
import pytest

from sandboxd.config import ConfigError, parse_config
from sandboxd.controlplane.quotas import Quotas, Usage
from sandboxd.controlplane.written_quantities import WrittenQuantities
from sandboxd.errors import ApiError

BASE = """
profiles:
  - display_name: default
"""


def quotas(text: str) -> Quotas:
    return Quotas(parse_config(BASE + text, "platform.yaml").quotas)


QUOTAS = """
quotas:
  default: {running_sandboxes: 10, concurrent_execs: 4}
  organizations:
    team-a: {running_sandboxes: 2, cpu: "1500m", memory: 1Gi}
    team-b: {concurrent_execs: 1}
"""


def refusal(call: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    return caught.value


def test_an_organization_entry_overrides_the_default_field_by_field() -> None:
    book = quotas(QUOTAS)
    a, b, other = book.for_org("team-a"), book.for_org("team-b"), book.for_org("team-z")
    assert (a.running_sandboxes, a.cpu_millicores, a.memory_bytes) == (2, 1500, 1 << 30)
    assert a.concurrent_execs == 4  # from default
    assert (b.running_sandboxes, b.concurrent_execs) == (10, 1)
    assert (other.running_sandboxes, other.cpu_millicores) == (10, None)


@pytest.mark.parametrize(
    ("usage", "cpu", "memory", "quota"),
    [
        (Usage(running_sandboxes=2), 100, 1, "running_sandboxes"),
        (Usage(running_sandboxes=1, cpu_millicores=1000), 600, 1, "cpu"),
        (Usage(running_sandboxes=1, memory_bytes=900 << 20), 100, 200 << 20, "memory"),
    ],
)
def test_each_start_quota_trips_with_a_reason_naming_it(
    usage: Usage, cpu: int, memory: int, quota: str
) -> None:
    book = quotas(QUOTAS)
    error = refusal(lambda: book.check_start("team-a", usage, cpu, memory))
    assert error.reason == f"CWSANDBOX_{quota.upper()}_QUOTA_EXCEEDED"
    assert error.metadata["quota"] == quota and error.metadata["organization"] == "team-a"
    assert quota in error.message
    book.check_start("team-a", Usage(), cpu, memory)  # an empty organization fits


def test_concurrent_execs_are_counted_and_given_back() -> None:
    book = quotas(QUOTAS)
    book.acquire_exec("team-b")
    error = refusal(lambda: book.acquire_exec("team-b"))
    assert error.reason == "CWSANDBOX_CONCURRENT_EXECS_QUOTA_EXCEEDED"
    book.acquire_exec("team-a")  # another organization is not affected
    book.release_exec("team-b")
    book.acquire_exec("team-b")


def test_no_quotas_configured_means_no_limits() -> None:
    book = quotas("")
    book.check_start("x", Usage(running_sandboxes=10**6, cpu_millicores=10**9), 10**6, 10**12)
    for _ in range(1000):
        book.acquire_exec("x")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("quotas: {organizations: {team-a: {memory: lots}}}", "quotas.organizations.team-a.memory"),
        ("quotas: {default: {cpu: -1}}", "quotas.default.cpu"),
        ("quotas: {default: {running_sandboxes: -1}}", "quotas.default.running_sandboxes"),
        ("quotas: {organizations: {Team A: {}}}", "quotas.organizations"),
        ("quotas: {default: {sandboxes: 3}}", "quotas.default.sandboxes"),
    ],
)
def test_bad_quota_configuration_names_the_path(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + text, "platform.yaml")
    assert f"platform.yaml: {where}" in str(caught.value)


def test_refusals_show_quantities_not_raw_bytes_and_millicores() -> None:
    """The request's share in the units it was written in, the quota and use as quantities."""
    book = quotas(QUOTAS)
    written = WrittenQuantities(cpu={600: "0.6"}, memory={200 << 20: "200Mi"})
    memory = refusal(
        lambda: book.check_start("team-a", Usage(1, 0, 900 << 20), 100, 200 << 20, written=written)
    )
    assert memory.message == (
        "organization 'team-a' is at its memory quota: 900Mi of 1Gi of memory in use, "
        "this request needs 200Mi more"
    )
    assert (memory.metadata["limit"], memory.metadata["requested"]) == (
        str(1 << 30),
        str(200 << 20),
    )  # metadata stays in plain integers for programs
    cpu = refusal(lambda: book.check_start("team-a", Usage(1, 1000, 0), 600, 1, written=written))
    assert cpu.message.endswith("1 of 1500m of CPU in use, this request needs 0.6 more")
