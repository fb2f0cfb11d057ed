"""``sandboxd controlplane --console-listen``: off by default, and it works over TLS.

A real control plane process (no runner); the console reaches its gRPC API on loopback with
the signed-in key, over TLS when the port speaks TLS (trusting ``--tls-ca``).
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sandboxd.console.server import KEEP_ALIVE_SECONDS
from tests.support.console import Console
from tests.support.processes import SANDBOXD, ControlPlaneProcess, Proc, child_env
from tests.support.tls import make_tls_files


def test_the_console_is_off_unless_asked_for(tmp_path: Path) -> None:
    plane = ControlPlaneProcess(tmp_path / "cp").start()
    try:
        assert plane.proc is not None
        assert "SANDBOXD_CONSOLE_URL=" not in plane.proc.output
    finally:
        assert plane.stop() == 0


def test_the_console_signs_in_and_reads_over_a_tls_port(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    plane = ControlPlaneProcess(
        tmp_path / "cp",
        tls_cert=tls.cert,
        tls_key=tls.key,
        ca_file=tls.ca,
        extra_args=["--tls-ca", str(tls.ca), "--console-listen", "127.0.0.1:0"],
    ).start()
    try:
        assert plane.proc is not None
        console = Console.of(plane.proc)
        lines = plane.proc.output.splitlines()
        console_line = next(i for i, line in enumerate(lines) if "SANDBOXD_CONSOLE_URL=" in line)
        ready_line = next(i for i, line in enumerate(lines) if "CWSANDBOX_BASE_URL=" in line)
        assert console_line < ready_line  # printed before the ready line
        with console.signed_in(plane.admin_key) as client:
            reply = client.get("api/runners")
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"runners": []}
            assert client.get("api/sandboxes").json() == {"sandboxes": []}
    finally:
        assert plane.stop() == 0


def test_an_idle_browser_connection_is_kept_longer_than_a_pages_pause(tmp_path: Path) -> None:
    """A connection left idle for 6 s still answers the next request on it.

    uvicorn's default closed it after 5 s, and a request that a browser sent on it as the
    server closed it failed (``Failed to fetch``): a console page then showed only that.
    """
    plane = ControlPlaneProcess(
        tmp_path / "cp", extra_args=["--console-listen", "127.0.0.1:0"]
    ).start()
    try:
        assert plane.proc is not None
        url = urlsplit(Console.of(plane.proc).url)
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        try:
            connection.request("GET", "/")
            first = connection.getresponse()
            assert first.status == 200 and first.read()
            assert KEEP_ALIVE_SECONDS > 6
            time.sleep(6)  # the idle pause itself is what is tested, not a wait for an event
            connection.request("GET", "/")  # the same socket: http.client does not redial
            second = connection.getresponse()
            assert second.status == 200 and second.read()
        finally:
            connection.close()
    finally:
        assert plane.stop() == 0


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:99999", "nohost:port"])
def test_a_bad_console_address_is_refused_naming_the_flag(tmp_path: Path, value: str) -> None:
    proc = Proc(
        [*SANDBOXD, "controlplane", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--console-listen", value],
        child_env(),
    ).start()  # fmt: skip
    assert proc.popen.wait(timeout=60) != 0
    assert "--console-listen" in proc.output
