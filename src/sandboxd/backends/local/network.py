"""Host-side networking for sandboxes with egress ``internet`` or ``allowlist``.

Egress ``none`` needs nothing here: the agent unshares a fresh network namespace and brings
up its loopback, so host loopback services are simply not in that namespace.

For the other two, the runner creates a named namespace (``ip netns add``), a veth pair with
a /30 from a private pool (one end in the namespace as ``eth0``, default route via the host
end), IPv6 off on both ends, and one ``iptables-restore --noflush`` transaction on the host:

* ``INPUT -i <veth> -j DROP``: the sandbox cannot reach services on the host itself;
* ``FORWARD -i <veth> -j SBX-<tag>``: a per-sandbox chain that drops the link-local range
  (cloud metadata) and the sandbox pool (other sandboxes), then accepts everything
  (``internet``) or only the allowlisted CIDRs and rejects the rest (``allowlist``);
* ``FORWARD -o <veth>`` for replies, and ``POSTROUTING ... -j MASQUERADE`` for NAT.

Filtering on the host rather than inside the namespace keeps every rule out of the
sandbox's reach and lets teardown be one transaction. IPv4 forwarding must be on
(``net.ipv4.ip_forward=1``); the backend turns it on, as Docker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
from dataclasses import asdict, dataclass

from ..base import EgressType

NETNS_DIR = "/run/netns"
IPAM_DIR = "/run/sandboxd/ipam"
METADATA_RANGE = "169.254.0.0/16"


class NetworkError(RuntimeError):
    """A host networking command failed."""


@dataclass(frozen=True)
class Lease:
    """The network resources of one sandbox (persisted in its state directory)."""

    tag: str
    index: int
    host_ip: str
    sandbox_ip: str

    @property
    def netns(self) -> str:
        """Name of the named network namespace."""
        return f"sandboxd-{self.tag}"

    @property
    def netns_path(self) -> str:
        """Path of the namespace's bind mount."""
        return os.path.join(NETNS_DIR, self.netns)

    @property
    def host_if(self) -> str:
        """Host end of the veth pair (IFNAMSIZ is 16 with the NUL)."""
        return f"sbx{self.tag}"

    @property
    def chain(self) -> str:
        """Per-sandbox filter chain."""
        return f"SBX-{self.tag}"

    def to_json(self) -> str:
        """Serialize for the state directory."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Lease:
        """Inverse of ``to_json``."""
        return cls(**json.loads(raw))


async def run(*argv: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run a host command; ``NetworkError`` with its stderr when it fails and ``check``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class NetworkManager:
    """Allocates /30s from ``pool`` and sets up / tears down sandbox networks."""

    def __init__(self, key: str, pool: str = "10.213.0.0/16", ipam_dir: str = IPAM_DIR) -> None:
        self.key = key
        self.pool = ipaddress.ip_network(pool)
        if self.pool.prefixlen > 29:
            raise ValueError("network pool must be /29 or larger")
        # Host-wide claims, one file per /30: several backends (data directories) on one
        # host share the pool without handing out the same subnet twice. /run is a tmpfs,
        # so claims do not outlive a reboot (and neither do the veths).
        pool_name = str(self.pool).replace("/", "_")
        self.ipam = os.path.join(ipam_dir, pool_name)

    def tag_for(self, sandbox_id: str) -> str:
        """A short, stable name part: unique per (data dir, sandbox)."""
        return hashlib.sha1(f"{self.key}/{sandbox_id}".encode()).hexdigest()[:10]

    def _claim_file(self, index: int) -> str:
        return os.path.join(self.ipam, str(index))

    def claim(self, lease: Lease) -> None:
        """Re-assert a recovered lease's claim (no-op when it is still recorded)."""
        os.makedirs(self.ipam, exist_ok=True)
        with open(self._claim_file(lease.index), "a") as fh:
            fh.write("")

    def allocate(self, sandbox_id: str) -> Lease:
        """Reserve the next free /30 of the pool (an exclusive create of its claim file)."""
        os.makedirs(self.ipam, exist_ok=True)
        tag = self.tag_for(sandbox_id)
        for index in range(1, self.pool.num_addresses // 4):
            try:
                fd = os.open(self._claim_file(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            os.write(fd, f"{self.key} {sandbox_id}\n".encode())
            os.close(fd)
            base = self.pool.network_address + index * 4
            return Lease(tag, index, str(base + 1), str(base + 2))
        raise NetworkError(f"network pool {self.pool} exhausted")

    def release(self, lease: Lease) -> None:
        """Return a lease's subnet to the pool."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._claim_file(lease.index))

    def _rules(self, lease: Lease, egress: EgressType, cidrs: tuple[str, ...], add: bool) -> str:
        ins, app = ("-I", "-A") if add else ("-D", "-D")
        comment = f"-m comment --comment sandboxd:{lease.tag}"
        hooks = [
            f"{ins} INPUT -i {lease.host_if} {comment} -j DROP",
            f"{ins} FORWARD -i {lease.host_if} {comment} -j {lease.chain}",
            f"{ins} FORWARD -o {lease.host_if} -m conntrack --ctstate RELATED,ESTABLISHED "
            f"{comment} -j ACCEPT",
        ]
        nat = (
            f"{app} POSTROUTING -s {lease.sandbox_ip}/32 ! -o {lease.host_if} {comment} "
            "-j MASQUERADE"
        )
        if not add:
            body = [*hooks, f"-F {lease.chain}", f"-X {lease.chain}"]
            return "\n".join(["*filter", *body, "COMMIT", "*nat", nat, "COMMIT", ""])
        chain = [
            f":{lease.chain} - [0:0]",
            f"-A {lease.chain} -d {METADATA_RANGE} -j DROP",
            f"-A {lease.chain} -d {self.pool} -j DROP",
        ]
        if egress is EgressType.ALLOWLIST:
            chain += [f"-A {lease.chain} -d {cidr} -j ACCEPT" for cidr in cidrs]
            chain.append(f"-A {lease.chain} -j REJECT --reject-with icmp-admin-prohibited")
        else:
            chain.append(f"-A {lease.chain} -j ACCEPT")
        return "\n".join(["*filter", *chain, *hooks, "COMMIT", "*nat", nat, "COMMIT", ""])

    async def setup(self, lease: Lease, egress: EgressType, cidrs: tuple[str, ...]) -> None:
        """Namespace, veth, addresses, routes and host rules; rolls back on failure."""
        try:
            with contextlib.suppress(OSError), open("/proc/sys/net/ipv4/ip_forward") as fh:
                if fh.read().strip() != "1":
                    _write("/proc/sys/net/ipv4/ip_forward", "1")
            await run("ip", "netns", "add", lease.netns)
            host = (
                f"link add {lease.host_if} type veth peer name eth0 netns {lease.netns}\n"
                f"addr add {lease.host_ip}/30 dev {lease.host_if}\n"
                f"link set {lease.host_if} up\n"
            )
            await run("ip", "-batch", "-", stdin=host.encode())
            with contextlib.suppress(OSError):
                _write(f"/proc/sys/net/ipv6/conf/{lease.host_if}/disable_ipv6", "1")
            inside = (
                f"addr add {lease.sandbox_ip}/30 dev eth0\n"
                "link set eth0 up\nlink set lo up\n"
                f"route add default via {lease.host_ip}\n"
            )
            await run("ip", "-n", lease.netns, "-batch", "-", stdin=inside.encode())
            rules = self._rules(lease, egress, cidrs, add=True)
            await run("iptables-restore", "--noflush", "-w", "5", stdin=rules.encode())
        except BaseException:
            await self.teardown(lease, egress, cidrs)
            raise

    async def teardown(self, lease: Lease, egress: EgressType, cidrs: tuple[str, ...]) -> None:
        """Remove rules, veth and namespace; tolerant of parts that never existed."""
        rules = self._rules(lease, egress, cidrs, add=False)
        try:
            await run("iptables-restore", "--noflush", "-w", "5", stdin=rules.encode())
        except NetworkError:
            await self._teardown_rules_one_by_one(rules)
        await run("ip", "link", "del", lease.host_if, check=False)
        await run("ip", "netns", "del", lease.netns, check=False)
        self.release(lease)

    async def _teardown_rules_one_by_one(self, rules: str) -> None:
        table = "filter"
        for line in rules.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-"):
                await run("iptables", "-w", "5", "-t", table, *line.split(), check=False)

    @staticmethod
    def resolv_conf() -> bytes | None:
        """The host's resolv.conf for internet sandboxes, unless it points at loopback."""
        try:
            with open("/etc/resolv.conf", "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        servers = [ln.split()[1] for ln in data.decode(errors="replace").splitlines()
                   if ln.startswith("nameserver") and len(ln.split()) > 1]  # fmt: skip
        usable = [s for s in servers if not s.startswith(("127.", "::1"))]
        return data if usable else None
