"""A real, throwaway PostgreSQL server for store tests, and store failures on demand.

:class:`PostgresServer` runs Debian's ``postgresql`` binaries (``scripts/setup.sh``
installs them; nothing of the packaged ``main`` cluster is used or started) in a temporary
directory of its own: ``initdb`` and the server run as the ``postgres`` user (both refuse
root) through ``setpriv``, which execs, so the server's PID is the child we hold. It listens
on a free port of 127.0.0.1 and on a unix socket in its directory, with password
(SCRAM) authentication and a random password; ``fsync`` is off (a test server loses
nothing of value in a crash). Start to accepting connections takes about a second.

Fixtures (imported by ``tests/conftest.py``, so every test module can ask for them):

``postgres_server`` (session)
    One server per test worker.
``database_url`` (function, parametrised ``sqlite`` / ``postgresql``)
    A SQLAlchemy URL of an empty database of the test's own: a SQLite file in ``tmp_path``,
    or a fresh database on ``postgres_server`` (``postgresql+psycopg://...``), dropped after.
``store_fault`` (function, parametrised ``sqlite-disk-full`` / ``postgresql-down`` /
``postgresql-read-only``)
    A :class:`StoreFault`: an empty database's ``url`` and ``fail()``/``recover()``, which
    make every write to it fail for real and then work again (see each class for what a
    write sees).

Everything is removed at the end, also when a test fails: servers stopped, databases
dropped, tmpfs mounts unmounted, temporary directories deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import pytest

from tests.support.ports import free_port
from tests.support.processes import Proc

PG_ROOT = Path("/usr/lib/postgresql")
_READY = "LOG:  database system is ready to accept connections"
_databases = itertools.count(1)


def postgres_bin_dir() -> Path | None:
    """``/usr/lib/postgresql/<newest>/bin``, or None when no server is installed."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin/postgres") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    return versions[-1].parent if versions else None


def require_postgres() -> Path:
    """The server's bin directory; skips (outside CI) where it cannot run."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the server as the postgres user")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    return bin_dir


@dataclass
class PostgresServer:
    """One ``postgres`` server in its own temporary directory; see the module docstring."""

    bin_dir: Path
    root: Path = field(init=False)
    port: int = field(init=False)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: Proc | None = None
    user: str = "postgres"

    def __post_init__(self) -> None:
        # Not under pytest's tmp_path: that is root's 0700 tree, which postgres cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="sandboxd-pg-"))
        self.port = free_port()
        shutil.chown(self.root, self.user, self.user)
        self.root.chmod(0o700)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                "--", *argv]  # fmt: skip

    def init(self) -> PostgresServer:
        """``initdb`` a new cluster (a superuser ``postgres`` with :attr:`password`)."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, self.user, self.user)
        subprocess.run(
            self._as_postgres(
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                "--locale=C", "--no-sync", "--no-instructions",
            ),
            check=True, capture_output=True, cwd=self.root, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        return self

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Start (or restart) the server on the same data directory and port."""
        if self.proc is not None and self.proc.popen.poll() is None:
            raise RuntimeError("the server is already running")
        self.proc = Proc(
            self._as_postgres(
                str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
                "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.socket_dir}",
                "-c", "log_line_prefix=",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ),
            {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
        ).start()  # fmt: skip
        self.proc.wait_for_line(_READY, timeout=timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, the data directory stays consistent)."""
        if self.proc is None or self.proc.popen.poll() is not None:
            return
        self.proc.popen.send_signal(signal.SIGINT)
        try:
            self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def remove(self) -> None:
        """Stop and delete everything (the data directory included)."""
        try:
            if self.proc is not None:
                self.thaw()
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------
    def url(self, database: str = "postgres", *, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL of ``database`` over TCP (any process on this machine can use it)."""
        return (
            f"postgresql+{driver}://{self.user}:{quote(self.password)}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def dsn(self, database: str = "postgres") -> str:
        """The same as a libpq connection string, for ``psycopg.connect``."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={database} user={self.user} "
            f"password={self.password} connect_timeout=10"
        )

    def admin(self, *statements: str, database: str = "postgres") -> list[Any]:
        """Run statements in autocommit (CREATE DATABASE cannot run in a transaction).

        Returns the rows of the last one that returned rows.
        """
        import psycopg

        rows: list[Any] = []
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            for statement in statements:
                cursor = conn.execute(statement)
                if cursor.description is not None:
                    rows = cursor.fetchall()
        return rows

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its name."""
        name = name or f"test_{os.getpid()}_{next(_databases)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, ending its sessions first (PostgreSQL 13+)."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database's URL, dropped afterwards."""
        name = self.create_database()
        try:
            yield self.url(name)
        finally:
            if self.proc is not None and self.proc.popen.poll() is None:
                self.drop_database(name)

    def freeze(self) -> None:
        """SIGSTOP the server and all its backends: calls hang (no error) until :meth:`thaw`.

        The store sets no statement or connect timeout, so a write blocks for as long as
        this lasts; a test drives it from a thread and bounds its own wait.
        """
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: int) -> None:
        """The postmaster first (no new children), then its children (each in its own
        session: PostgreSQL backends call setsid, so a process-group signal misses them)."""
        if self.proc is None or self.proc.popen.poll() is not None:
            return
        postmaster = self.proc.popen.pid
        os.kill(postmaster, signum)
        for pid in _children(postmaster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def end_sessions(self, database: str) -> int:
        """Terminate every session on ``database`` (but ours); returns how many."""
        rows = self.admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        return int(rows[0][0])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) in parentheses: state, ppid, ...
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


@contextlib.contextmanager
def postgres(bin_dir: Path | None = None) -> Iterator[PostgresServer]:
    """A started server, removed on exit."""
    bin_dir = bin_dir or require_postgres()
    server = PostgresServer(bin_dir)
    try:
        yield server.init().start()
    finally:
        server.remove()


# -- store failures ----------------------------------------------------------------------------


class StoreFault(Protocol):
    """A database whose writes can be made to fail for real, and then to work again."""

    url: str
    kind: str

    def fail(self) -> None:
        """From now on writes (new transactions) fail."""

    def recover(self) -> None:
        """Writes work again (a pooled connection may fail once more; see each class)."""


@dataclass
class PostgresDown:
    """The server stops (fast shutdown) and starts again on the same data directory and port.

    While down, a write through a pooled connection raises ``sqlalchemy.exc.OperationalError``
    ("server closed the connection unexpectedly" / "terminating connection due to
    administrator command"; SQLAlchemy then invalidates its pool), a new connection
    OperationalError "connection refused". After :meth:`recover` the data are all there and
    new connections work; a connection pooled before the restart fails once more with
    OperationalError, as after any real server restart.
    """

    server: PostgresServer
    url: str
    kind: str = "postgresql-down"

    def fail(self) -> None:
        self.server.stop()

    def recover(self) -> None:
        self.server.start()


@dataclass
class PostgresReadOnly:
    """The database turns read-only: ``default_transaction_read_only`` and its sessions ended.

    Reads keep working. Each session that existed is ended once at :meth:`fail` and at
    :meth:`recover` (the setting applies when a session starts), so the first use of a
    pooled connection raises ``sqlalchemy.exc.OperationalError`` ("terminating connection
    due to administrator command"); after that, while failed, a write raises
    ``sqlalchemy.exc.InternalError`` wrapping ``psycopg.errors.ReadOnlySqlTransaction``
    ("cannot execute INSERT in a read-only transaction", SQLSTATE 25006).
    """

    server: PostgresServer
    database: str
    url: str
    kind: str = "postgresql-read-only"

    def _set(self, value: str) -> None:
        self.server.admin(
            f'ALTER DATABASE "{self.database}" SET default_transaction_read_only = {value}'
        )
        self.server.end_sessions(self.database)

    def fail(self) -> None:
        self._set("on")

    def recover(self) -> None:
        self._set("off")


@dataclass
class SqliteDiskFull:
    """The SQLite database sits on a small tmpfs that a filler file fills to the last byte.

    While full, a write that needs a new page (in WAL mode: any write that grows the
    ``-wal`` file, i.e. practically every one) raises ``sqlalchemy.exc.OperationalError``
    ("database or disk is full", SQLITE_FULL); reads keep working. :meth:`recover` deletes
    the filler; the same connections then write again. The mount is the test's own (in the
    machine's mount namespace, under ``tmp_path``) and is unmounted at the end.
    """

    mount: Path
    url: str
    kind: str = "sqlite-disk-full"

    @property
    def filler(self) -> Path:
        return self.mount / "filler"

    def fail(self) -> None:
        with open(self.filler, "ab", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):  # to the last byte tmpfs will give
                with contextlib.suppress(OSError):  # ENOSPC
                    while fh.write(b"\0" * size):
                        pass

    def recover(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m", inodes: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size`` (and at most ``inodes`` inodes, the root included; 0: the
    default) mounted at ``path`` (made if missing), unmounted on exit."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        for _ in range(50):
            done = subprocess.run(["umount", str(path)], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)  # a child (a control plane) may still hold a file there
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One running server for this test worker's session."""
    with postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture(params=["sqlite-disk-full", "postgresql-down", "postgresql-read-only"])
def store_fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFault]:
    """An empty database whose writes the test can break and heal (see :class:`StoreFault`).

    ``postgresql-down`` gets a server of its own (it is stopped); the read-only fault uses
    a fresh database on the worker's shared server.
    """
    if request.param == "sqlite-disk-full":
        with small_tmpfs(tmp_path / "db") as mount:
            fault = SqliteDiskFull(mount, f"sqlite:///{mount / 'store.db'}")
            try:
                yield fault
            finally:
                fault.recover()
    elif request.param == "postgresql-down":
        with postgres() as server:
            yield PostgresDown(server, server.url(server.create_database()))
    else:
        shared: PostgresServer = request.getfixturevalue("postgres_server")
        name = shared.create_database()
        try:
            yield PostgresReadOnly(shared, name, shared.url(name))
        finally:
            shared.drop_database(name)
