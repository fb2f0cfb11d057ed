"""The v1 codec's pure parts: the create request onto our model, states, network wishes."""

from __future__ import annotations

import pytest

from sandboxd.controlplane.v1.create_request import parse_create
from sandboxd.controlplane.v1.network import network_wish
from sandboxd.controlplane.v1.states import status_of_state, v1_state
from sandboxd.errors import ApiError
from sandboxd_protocol.v1 import sandbox_pb2 as v
from sandboxd_protocol.v1beta2 import gateway_pb2 as b


def request(**spec: object) -> v.CreateSandboxRequest:
    container = v.Container(
        name="main",
        image="python:3.11",
        command="/bin/sh",
        args=["-c", "sleep infinity"],
        environment_variables={"A": "1"},
        files=[v.FileMount(path="/etc/app/../app.conf", content=b"secret bytes")],
        resource_requirements=v.ResourceRequirements(
            requests=v.Resources(cpu="250m", memory="128Mi"),
            limits=v.Resources(cpu="1", memory="512Mi", gpu=v.Gpu(count=1, type="A100")),
        ),
    )
    return v.CreateSandboxRequest(
        sandbox=v.Sandbox(spec=v.SandboxSpec(containers=[container], **spec)),  # type: ignore[arg-type]
        request_id="r-1",
    )


def test_the_single_container_becomes_our_request() -> None:
    plan = parse_create(
        request(tags=["t"], runner_ids=["r1", "r1"], max_lifetime_seconds=60, mode=2)
    )
    got = plan.request
    assert got.command == ("/bin/sh", "-c", "sleep infinity")
    assert (got.image, got.environment, got.tags) == ("python:3.11", {"A": "1"}, ("t",))
    assert (got.cpu_request, got.cpu_limit) == (250, 1000)
    assert (got.memory_request, got.memory_limit) == (128 << 20, 512 << 20)
    assert (got.gpu_count, got.gpu_type) == (1, "A100")
    assert got.mounted_files == (("/etc/app.conf", b"secret bytes"),)
    assert (got.runner_ids, got.max_lifetime_seconds) == (("r1",), 60)
    assert plan.request_id == "r-1"
    # The echo keeps the spec, but not the files' bytes.
    assert plan.spec.containers[0].files[0].path == "/etc/app/../app.conf"
    assert plan.spec.containers[0].files[0].content == b""
    assert list(plan.spec.tags) == ["t"]


def test_legacy_resources_count_as_limits() -> None:
    legacy = request()
    container = legacy.sandbox.spec.containers[0]
    container.ClearField("resource_requirements")
    container.resources.CopyFrom(v.Resources(cpu="2", memory="1Gi"))
    got = parse_create(legacy).request
    assert (got.cpu_limit, got.memory_limit) == (2000, 1 << 30)
    assert (got.cpu_request, got.memory_request) == (None, None)  # the profile's defaults


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        (v.NetworkOptions(), ("", ())),
        (v.NetworkOptions(deny_egress=True), ("none", ())),
        (v.NetworkOptions(deny_egress=False), ("", ())),
        (v.NetworkOptions(egress=[v.EgressRule(any=True)]), ("internet", ())),
        (
            v.NetworkOptions(
                egress=[
                    v.EgressRule(cidr=v.CidrBlock(cidr="10.1.2.3/8")),
                    v.EgressRule(cidr=v.CidrBlock(cidr="10.0.0.0/8")),
                ]
            ),
            ("allowlist", ("10.0.0.0/8",)),
        ),
        (
            v.NetworkOptions(
                egress=[v.EgressRule(cidr=v.CidrBlock(cidr="10.0.0.0/8")), v.EgressRule(any=True)]
            ),
            ("internet", ()),
        ),
    ],
)
def test_egress_wishes(network: v.NetworkOptions, expected: tuple[str, tuple[str, ...]]) -> None:
    wish = network_wish(v.SandboxSpec(network=network))
    assert (wish.egress_type, wish.egress_cidrs) == expected


def test_services_become_exposed_ports_with_one_visibility() -> None:
    public = network_wish(
        v.SandboxSpec(
            services=[
                v.Service(port=80, visibility=v.VISIBILITY_PUBLIC),
                v.Service(port=443, visibility=v.VISIBILITY_PUBLIC),
            ]
        )
    )
    assert (public.ingress_type, public.exposed_ports) == ("public", (80, 443))
    private = network_wish(v.SandboxSpec(services=[v.Service(port=8080)]))
    assert (private.ingress_type, private.exposed_ports) == ("internal", (8080,))
    mixed = v.SandboxSpec(
        services=[v.Service(port=80, visibility=v.VISIBILITY_PUBLIC), v.Service(port=81)]
    )
    with pytest.raises(ApiError) as caught:
        network_wish(mixed)
    assert caught.value.violations[0].field == "spec.services"


def test_states_map_per_protocol_and_never_read_unspecified() -> None:
    pairs = {
        b.SANDBOX_STATUS_TERMINATING: v.STATE_TERMINATING,
        b.SANDBOX_STATUS_TERMINATED: v.STATE_TERMINATED,
        b.SANDBOX_STATUS_PENDING: v.STATE_PENDING,
        b.SANDBOX_STATUS_PAUSED: v.STATE_PAUSED,
        b.SANDBOX_STATUS_RUNNING: v.STATE_RUNNING,
        b.SANDBOX_STATUS_COMPLETED: v.STATE_COMPLETED,
    }
    for status, state in pairs.items():
        assert v1_state(status) == state
        assert status_of_state(state) == status
    assert v1_state(b.SANDBOX_STATUS_UNSPECIFIED) == v.STATE_CREATING
    assert status_of_state(v.STATE_PREPARING) is None
