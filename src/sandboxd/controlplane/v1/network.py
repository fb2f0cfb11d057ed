"""A v1 sandbox's network options and services, mapped onto the runners' network modes.

What our runners enforce (protocol/v1.md §0.2 item 11 and the egress modes of the profiles):
egress is none, internet, or an allowlist of CIDRs; exposed TCP ports are published public
or internal. So:

* no egress rules: the profile's default egress mode, or with ``deny_egress`` a ``none``
  mode (rules are grants over default-deny, so ``deny_egress`` with rules is a contradiction);
* an ``any`` rule: an ``internet`` mode;
* ``cidr`` rules (without ``except`` or ``ports``): an ``allowlist`` mode whose CIDRs cover
  them, narrowed to exactly the requested CIDRs;
* ``deny_ingress`` denies CUSTOM ingress, which is never offered here: it always holds;
* every rule we cannot enforce (``https_hostname``, ``tenant``, ``selector``, ``except``,
  port ranges, ingress rules) is refused with INVALID_ARGUMENT naming the rule, never
  silently widened to more access than asked;
* each ``Service`` exposes its TCP ``port``; PUBLIC visibility publishes it publicly,
  PRIVATE or none internally (one visibility per sandbox). HTTPS endpoints are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network

from sandboxd.config.models import EgressType, IngressType
from sandboxd.controlplane.limits import MAX_EXPOSED_PORTS
from sandboxd.errors import invalid_argument
from sandboxd_protocol.v1 import sandbox_pb2

V = sandbox_pb2
MAX_EGRESS_RULES = 64


@dataclass(frozen=True)
class NetworkWish:
    """What a v1 spec asks of the network, in runner terms ("" = the profile's default)."""

    egress_type: str = ""
    egress_cidrs: tuple[str, ...] = ()
    ingress_type: str = ""
    exposed_ports: tuple[int, ...] = ()


def _cidr(rule: sandbox_pb2.EgressRule, field: str) -> str:
    block = rule.cidr
    if len(getattr(block, "except")):
        raise invalid_argument(
            f"{field}.cidr.except", "exceptions inside a CIDR rule cannot be enforced here"
        )
    try:
        return str(ip_network(block.cidr, strict=False))
    except ValueError:
        raise invalid_argument(
            f"{field}.cidr.cidr", f"{block.cidr!r} is not a CIDR (example: 140.82.112.0/20)"
        ) from None


def _egress(network: sandbox_pb2.NetworkOptions) -> tuple[str, tuple[str, ...]]:
    rules = network.egress
    if len(rules) > MAX_EGRESS_RULES:
        raise invalid_argument("spec.network.egress", f"at most {MAX_EGRESS_RULES} rules")
    cidrs: list[str] = []
    anywhere = False
    for index, rule in enumerate(rules):
        field = f"spec.network.egress[{index}]"
        kind = rule.WhichOneof("destination")
        if len(rule.ports):
            raise invalid_argument(f"{field}.ports", "port-restricted egress cannot be enforced")
        if len(rule.https_hostname_except):
            raise invalid_argument(
                f"{field}.https_hostname_except", "hostname egress cannot be enforced here"
            )
        if kind == "cidr":
            cidrs.append(_cidr(rule, field))
        elif kind == "any":
            if not rule.any:
                raise invalid_argument(f"{field}.any", "must be true when given")
            anywhere = True
        elif kind is None:
            raise invalid_argument(field, "names no destination (cidr or any)")
        else:
            raise invalid_argument(
                f"{field}.{kind}", f"{kind} egress rules cannot be enforced by this server"
            )
    denied = network.HasField("deny_egress") and network.deny_egress
    if denied and len(rules):
        raise invalid_argument(
            "spec.network.deny_egress", "denies all egress, so it cannot go with egress rules"
        )
    if anywhere:
        return EgressType.INTERNET.value, ()
    if cidrs:
        return EgressType.ALLOWLIST.value, tuple(dict.fromkeys(cidrs))
    if denied:
        return EgressType.NONE.value, ()
    return "", ()


def _ingress(spec: sandbox_pb2.SandboxSpec) -> tuple[str, tuple[int, ...]]:
    network = spec.network
    for index, _rule in enumerate(network.ingress):
        raise invalid_argument(
            f"spec.network.ingress[{index}]",
            "ingress rules cannot be enforced here; expose ports with services",
        )
    if len(spec.services) > MAX_EXPOSED_PORTS:
        raise invalid_argument("spec.services", f"at most {MAX_EXPOSED_PORTS} services")
    ports: list[int] = []
    visibilities: set[int] = set()
    for index, service in enumerate(spec.services):
        field = f"spec.services[{index}]"
        if not 1 <= service.port <= 65535:
            raise invalid_argument(f"{field}.port", f"port {service.port} is not in 1..65535")
        if service.protocol not in (V.SERVICE_PROTOCOL_UNSPECIFIED, V.SERVICE_PROTOCOL_TCP):
            raise invalid_argument(f"{field}.protocol", "only TCP services can be exposed here")
        if service.visibility not in V.Visibility.values():
            raise invalid_argument(f"{field}.visibility", f"unknown value {service.visibility}")
        if service.visibility == V.VISIBILITY_CUSTOM:
            raise invalid_argument(f"{field}.visibility", "custom visibility is not offered")
        if service.HasField("endpoint"):
            raise invalid_argument(
                f"{field}.endpoint", "HTTPS and TLS endpoints are not offered by this server"
            )
        if service.port in ports:
            raise invalid_argument(f"{field}.port", f"port {service.port} is exposed twice")
        ports.append(service.port)
        visibilities.add(service.visibility == V.VISIBILITY_PUBLIC)
    if len(visibilities) > 1:
        raise invalid_argument(
            "spec.services", "all services of one sandbox must share one visibility here"
        )
    if not ports:
        return "", ()
    public = visibilities == {True}
    kind = IngressType.PUBLIC if public else IngressType.INTERNAL
    return kind.value, tuple(ports)


def network_wish(spec: sandbox_pb2.SandboxSpec) -> NetworkWish:
    """Validate the network options and services; raise INVALID_ARGUMENT naming the field."""
    network = spec.network
    if network.dns_egress not in V.DNSEgressMode.values():
        raise invalid_argument("spec.network.dns_egress", f"unknown value {network.dns_egress}")
    if network.dns_egress == V.DNS_EGRESS_MODE_DENY:
        raise invalid_argument("spec.network.dns_egress", "DNS-only denial cannot be enforced")
    egress_type, cidrs = _egress(network)
    ingress_type, ports = _ingress(spec)
    return NetworkWish(egress_type, cidrs, ingress_type, ports)


def effective_egress(egress_type: str, cidrs: list[str]) -> list[sandbox_pb2.EgressRule]:
    """The egress a sandbox got, as v1 rules (none: no rule)."""
    if egress_type == EgressType.INTERNET.value:
        return [V.EgressRule(any=True)]
    if egress_type == EgressType.ALLOWLIST.value:
        return [V.EgressRule(cidr=V.CidrBlock(cidr=c)) for c in cidrs]
    return []
