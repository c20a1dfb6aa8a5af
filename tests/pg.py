"""A real PostgreSQL server for the tests (a pytest plugin, loaded from tests/conftest.py).

``pg_server`` (session scope, one per xdist worker, started only when a test asks for it): ``initdb`` in a
temporary folder, ``postgres`` on a free port of 127.0.0.1 with password authentication, stopped and removed
at the end. ``pg_url`` (per test): a new empty database on it, as a ``postgresql+asyncpg://`` URL with the
password in it. ``database_url`` (per test, parametrized ``sqlite`` / ``postgresql``): what the database
tests run on.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (Debian's package
makes it) or ``nobody``. The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin
(.ci/run installs the package where neither has them). Without them the PostgreSQL tests are skipped,
except under CI (the ``CI`` variable set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def pg_bin_dir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres`` (the newest Debian version), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The user to run the server as when we are root (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


@dataclass
class PgServer:
    bin_dir: Path
    data_dir: Path
    port: int
    password: str
    _names: Iterator[int]

    @property
    def admin_url(self) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (the password through the environment, never argv)."""
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            env={**os.environ, "PGPASSWORD": self.password}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def rows(self, database: str, sql: str) -> list[tuple[object, ...]]:
        """``sql``'s rows, as sqlite3 gives them: integers as int, NULL as None, the rest as str."""

        def value(text: str) -> object:
            if text == "":
                return None
            return int(text) if text.lstrip("-").isdigit() else text

        lines = self.psql(sql, database).splitlines()
        return [tuple(value(v) for v in line.split("|")) for line in lines if line]

    def new_database(self, template: str = "template0") -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


def _start(bin_dir: Path) -> tuple[PgServer, str | None]:
    user = _run_as()
    # Not pytest's tmp_path: as root that is mode 0700, which the server's user could not enter.
    data_dir = Path(tempfile.mkdtemp(prefix="pg-test-"))
    try:
        return _init_and_start(bin_dir, data_dir, user), user
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _init_and_start(bin_dir: Path, data_dir: Path, user: str | None) -> PgServer:
    password = secrets.token_hex(16)
    pwfile = data_dir / "pw"
    pwfile.write_text(password)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    cluster = data_dir / "cluster"
    made = subprocess.run(
        _as_user(user, [str(bin_dir / "initdb"), "-D", str(cluster), "-U", SUPERUSER, "-A", "scram-sha-256",
                        f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed: {made.stderr.strip()[-2000:]}")
    pwfile.unlink()
    for attempt in itertools.count():
        port = free_port()
        # fsync off: a test server's data need not survive a power cut; the socket in its own folder.
        options = f"-h 127.0.0.1 -p {port} -k {data_dir} -F -c max_connections=200"
        started = subprocess.run(
            _as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(cluster), "-o", options,
                            "-l", str(data_dir / "server.log"), "-w", "-t", "60", "start"]),
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        if started.returncode == 0:
            return PgServer(bin_dir, cluster, port, password, itertools.count())
        if attempt == 2:  # another process took the port between our probe and the server's bind, thrice
            log = (data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres did not start: {started.stderr}\n{log}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL is not installed (initdb not found): apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI runs the PostgreSQL tests: .ci/run installs it)")
        pytest.skip(message)
    server, user = _start(bin_dir)
    try:
        yield server
    finally:
        subprocess.run(
            _as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A new, empty database on the test server; dropped after the test."""
    name = pg_server.new_database()
    yield pg_server.url(name)
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_migrated_template(pg_server: PgServer) -> str:
    """A database migrated to head once per session, that ``pg_migrated_url`` copies (a copy takes a tenth
    of the migrations' time)."""
    from bot.db import Database

    name = pg_server.new_database()

    async def migrate() -> None:
        db = Database(pg_server.url(name))
        await db.migrate()
        await db.close()  # a template must have no connections while it is copied

    asyncio.run(migrate())
    return name


@pytest.fixture
def pg_migrated_url(pg_server: PgServer, pg_migrated_template: str) -> Iterator[str]:
    """A new database already at the latest migration; dropped after the test."""
    name = pg_server.new_database(template=pg_migrated_template)
    yield pg_server.url(name)
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database a test runs on: a new SQLite file, then a PostgreSQL database already migrated (its
    empty databases are ``pg_url``'s). Each test runs on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    return str(request.getfixturevalue("pg_migrated_url"))
