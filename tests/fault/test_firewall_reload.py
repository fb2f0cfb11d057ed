"""A firewall reload on a runner's host does not leave its sandboxes unfiltered.

The fault: the host's firewall manager reloads (every chain of the ``filter`` and ``nat``
tables flushed and deleted, as ``netfilter-persistent reload`` or configuration management
applying a saved file do) while a sandbox with ``internet`` egress runs. Its rules went with
the reload, and before the rule watch (``rule_watch.py``) nothing put them back: the sandbox
reached the host's own services, and every private network, for as long as it ran.

The runner runs in a host namespace of its own (``tests/support/hosts.py``), so the reload is
of that host's firewall only; a service listens on the host's address there.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandboxd.backends.local.state import SandboxRecord
from tests.support.faults import RECOVERY, Cluster, start_cluster, wait_until
from tests.support.hosts import HostNetwork, enter

PORT = 8123
METRICS_PORT = 9464  # the runner's, in its host's own network namespace
SERVICE = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    conn.sendall(b"host service\\n")
    conn.close()
"""
PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as conn:
        print("reached", conn.recv(64).decode().strip())
except OSError as error:
    print("blocked", type(error).__name__)
"""


def _ours(netns: str) -> collections.Counter[str]:
    """The sandboxd rules of the host ``netns``, as ``iptables-save`` prints them."""
    saved = subprocess.run(
        [*enter(netns), "iptables-save"], check=True, capture_output=True, text=True
    ).stdout
    marks = ("SBX", "sandboxd", "SANDBOXD")
    return collections.Counter(
        line
        for line in saved.splitlines()
        if line.startswith("-A ") and any(m in line for m in marks)
    )


@pytest.fixture
def cluster(test_network: HostNetwork, database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """The fault tests' cluster, its runner serving metrics on its host's address."""
    metrics = ("--metrics-listen", f"0.0.0.0:{METRICS_PORT}")
    with start_cluster(test_network, tmp_path, database_url, runner_args=metrics) as running:
        yield running


def _repairs(cluster: Cluster) -> float:
    """``sandboxd_runner_backend_events_total{event="firewall_repairs"}`` of the runner."""
    url = f"http://{cluster.host.address}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # the test network only
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name, sample.labels.get("event")) == (
                "sandboxd_runner_backend_events_total", "firewall_repairs"
            ):  # fmt: skip
                return float(sample.value)
    raise AssertionError("the runner publishes no firewall_repairs count")


@contextlib.contextmanager
def _host_service(cluster: Cluster) -> Iterator[None]:
    """A service on the runner host's address, answering, while the block runs."""
    host = cluster.host
    service = subprocess.Popen(
        [*enter(host.netns), sys.executable, "-c", SERVICE, host.address, str(PORT)]
    )

    def listening() -> bool:  # reached from the host itself
        ran = subprocess.run(
            [*enter(host.netns), sys.executable, "-c", PROBE, host.address, str(PORT)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return ran.stdout.startswith("reached")

    try:
        wait_until("the host's service listening", listening, 10)
        yield
    finally:
        service.kill()
        service.wait()


def _reload(netns: str) -> None:
    """A reload as configuration management does it: a saved ruleset restored, here one with
    no rules, every chain of both tables gone at once."""
    subprocess.run(
        [*enter(netns), "iptables-restore"],
        input="*filter\nCOMMIT\n*nat\nCOMMIT\n", text=True, check=True,
    )  # fmt: skip


def test_a_reload_on_the_runner_host_leaves_its_sandbox_filtered(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id, profile="default")  # internet egress
    host = cluster.host
    with _host_service(cluster):

        def probe() -> str:
            run = gateway.exec(sandbox_id, "python3", "-c", PROBE, host.address, str(PORT))
            return run.stdout.decode().strip()

        assert probe().startswith("blocked"), "the sandbox reached the host before the reload"
        before = _ours(host.netns)
        assert any(line.endswith("-j DROP") and "SBX-I-" in line for line in before), before
        assert _repairs(cluster) == 0

        _reload(host.netns)
        runner = cluster.runner.proc
        assert runner is not None

        def warned() -> bool:  # the proof that the reload took the rules and they were put back
            return any("lost rules of this runner's" in line for line in list(runner.lines))

        wait_until("the runner's warning", warned, 10)
        wait_until("every rule back", lambda: _ours(host.netns) == before, 10)
        assert _repairs(cluster) >= 1  # an operator's alert sees it too
        assert probe().startswith("blocked"), "the sandbox reaches the host after the reload"
        assert gateway.exec(sandbox_id, "true").exit_code == 0  # it still runs, untouched


def test_a_runner_killed_right_after_a_reload_puts_the_rules_back_when_restarted(
    cluster: Cluster,
) -> None:
    """The runner is SIGKILLed right after the reload, before or while it puts the rules
    back. Restarted, it recovers the sandbox and puts every hook of its network back, once
    each; the sandbox's own chain comes back as it was or, if it was gone before the new
    runner saw it, refusing everything: either way the sandbox does not reach the host.
    (The networks the killed runner had made ahead are not its sandbox's: the next runner
    removes those and makes new ones.)"""
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id, profile="default")  # internet egress
    host = cluster.host
    record = SandboxRecord.load(cluster.runner.state_dir / "backend" / "sandboxes" / sandbox_id)
    assert record.lease is not None
    mark = f'"sandboxd:{record.lease.tag}"'  # the comment of its network's hooks
    with _host_service(cluster):
        hooks_before = [line for line in _ours(host.netns).elements() if mark in line]
        assert len(hooks_before) == 5, hooks_before  # INPUT log and drop, FORWARD twice, nat
        _reload(host.netns)
        cluster.runner.kill()  # SIGKILL, within the watch's wait for quiet
        cluster.runner.start()
        cluster.wait_health(True, RECOVERY)

        def hooks_back() -> bool:
            now = [line for line in _ours(host.netns).elements() if mark in line]
            return collections.Counter(now) == collections.Counter(hooks_before)

        wait_until("every hook back, once", hooks_back, 10)
        run = gateway.exec(sandbox_id, "python3", "-c", PROBE, host.address, str(PORT))
        assert run.stdout.decode().startswith("blocked"), run
