"""gRPC's transport choice of the client and the server (``cwsandbox/_grpc_transport.py``).

gRPC reads ``GRPC_EXPERIMENTS`` once, when it is imported, so the cases that matter run in
fresh interpreters started here: the choice must be made before ``grpc`` is imported, must
leave a process's own choice alone, and must name only experiments the installed gRPC knows
(an unknown name is logged as an error on every start).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cwsandbox import _grpc_transport

#: Prints, in a fresh interpreter, the order in which the transport module and grpc were
#: first imported while importing argv[1], and the environment value after it.
_IMPORT_ORDER = """
import importlib, os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("grpc", "cwsandbox._grpc_transport") and name not in seen:
            seen.append(name)
        return None
sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(",".join(seen))
print(os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
"""


def _fresh(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k != _grpc_transport.EXPERIMENTS_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Unknown experiment" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def _applies() -> bool:
    return _grpc_transport.tested(_grpc_transport.grpc_release())


def test_the_installed_grpc_release_is_read_without_importing_it() -> None:
    out = _fresh(  # the module alone: importing cwsandbox imports grpc (after the choice)
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('t', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.grpc_release()); print('grpc' in sys.modules)\n",
        _grpc_transport.__file__,
    )
    import grpc

    major, minor = (int(part) for part in grpc.__version__.split(".")[:2])
    assert out == [str((major, minor)), "False"]


@pytest.mark.parametrize("module", ["cwsandbox", "sandboxd.cli"])
def test_the_transport_is_chosen_before_grpc_is_imported(module: str) -> None:
    order, value = _fresh(_IMPORT_ORDER, module)
    assert order == "cwsandbox._grpc_transport,grpc"
    assert value == (_grpc_transport.EXPERIMENTS if _applies() else "<unset>")


def test_a_process_that_chose_its_own_experiments_keeps_them() -> None:
    _, value = _fresh(_IMPORT_ORDER, "cwsandbox", env={"GRPC_EXPERIMENTS": ""})
    assert value == ""
    _, value = _fresh(
        _IMPORT_ORDER, "sandboxd.cli", env={"GRPC_EXPERIMENTS": "-event_engine_client"}
    )
    assert value == "-event_engine_client"


def test_the_experiments_set_are_known_to_the_installed_grpc() -> None:
    """An unknown name would log an error in every client and server process (checked in
    ``_fresh``): a grpcio release in range that renamed one fails here, not in the field."""
    if not _applies():
        pytest.skip(f"grpcio {_grpc_transport.grpc_release()} is outside the tested releases")
    out = _fresh(
        "import asyncio, os, cwsandbox, grpc.aio\n"
        "async def main():\n"
        "    channel = grpc.aio.insecure_channel('127.0.0.1:9')\n"
        "    await channel.close()\n"
        "asyncio.run(main())\n"
        "print(os.environ['GRPC_EXPERIMENTS'])\n",
        env={"GRPC_VERBOSITY": "ERROR"},
    )
    assert out == [_grpc_transport.EXPERIMENTS]


@pytest.mark.parametrize(
    ("release", "chosen"),
    [((1, 85), True), ((1, 89), True), ((1, 84), False), ((1, 90), False), (None, False)],
)
def test_only_tested_releases_get_the_choice(
    monkeypatch: pytest.MonkeyPatch, release: tuple[int, int] | None, chosen: bool
) -> None:
    monkeypatch.delenv(_grpc_transport.EXPERIMENTS_ENV, raising=False)
    monkeypatch.setattr(_grpc_transport, "grpc_release", lambda: release)
    _grpc_transport.choose_transport()
    expected = _grpc_transport.EXPERIMENTS if chosen else None
    assert os.environ.get(_grpc_transport.EXPERIMENTS_ENV) == expected
