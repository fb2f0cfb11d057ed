"""Placement of network wishes by kind (the v1 protocol): the profile's mode of that kind.

An allowlist wish is granted only by an allowlist mode whose CIDRs cover every requested
one, and then narrowed to exactly the request; a wider wish finds no mode and is refused,
so a request can never be granted more than the profile allows.
"""

from __future__ import annotations

import dataclasses

import pytest

from sandboxd.config import parse_config
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2

CONFIG = """
profiles:
  - display_name: default
    spec:
      network:
        egress:
          default: internet
          modes:
            internet: {type: internet}
            quiet: {type: none}
            office: {type: allowlist, cidrs: ["10.1.0.0/16", "192.0.2.7/32"]}
        ingress: {default: internal, modes: {open: {type: public}, internal: {type: internal}}}
default_bindings:
  - {profile: default, is_default: true}
"""

BASE = SandboxRequest(
    command=("sleep", "1"),
    image="",
    environment={},
    tags=(),
    profile_names=(),
    runner_ids=(),
    cpu_limit=None,
    cpu_request=None,
    memory_limit=None,
    memory_request=None,
    gpu_count=0,
    gpu_type="",
    egress_mode="",
    ingress_mode="",
    exposed_ports=(),
    mounted_files=(),
    max_lifetime_seconds=None,
)


@pytest.fixture
def registry() -> RunnerRegistry:
    registry = RunnerRegistry(parse_config(CONFIG, "test.yaml"))
    registry.register(
        runner_pb2.Register(
            runner_id="r1",
            capabilities=runner_pb2.Capabilities(cpu_millicores=4000, memory_bytes=8 << 30),
        )
    )
    return registry


def test_kinds_pick_the_profiles_mode_of_that_kind(registry: RunnerRegistry) -> None:
    assert place(registry, BASE).egress_mode == "internet"
    none = place(registry, dataclasses.replace(BASE, egress_type="none"))
    assert (none.egress_mode, none.egress_type.value) == ("quiet", "none")
    public = dataclasses.replace(BASE, exposed_ports=(80,), ingress_type="public")
    assert (place(registry, public).ingress_mode, place(registry, public).ingress_type) == (
        "open",
        "public",
    )


def test_an_allowlist_is_narrowed_to_the_request(registry: RunnerRegistry) -> None:
    wish = dataclasses.replace(BASE, egress_type="allowlist", egress_cidrs=("10.1.2.0/24",))
    chosen = place(registry, wish)
    assert (chosen.egress_mode, chosen.egress_cidrs) == ("office", ("10.1.2.0/24",))


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "192.0.2.0/24", "0.0.0.0/0", "::/0"])
def test_a_wider_allowlist_is_refused(registry: RunnerRegistry, cidr: str) -> None:
    wish = dataclasses.replace(BASE, egress_type="allowlist", egress_cidrs=("10.1.0.0/16", cidr))
    with pytest.raises(ApiError) as caught:
        place(registry, wish)
    assert caught.value.reason == "CWSANDBOX_NO_SUITABLE_RUNNER"
    assert "spec.network.egress" in {v.field for v in caught.value.violations}
