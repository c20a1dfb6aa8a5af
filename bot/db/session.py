"""The async engine, the session factory, and applying migrations at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, CursorResult, Result, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.db.sqlite_loop import use_loop_connections

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config that needs no alembic.ini: the bot applies migrations itself at start."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (/usage, /stats) run beside the writer; foreign keys are off by default in SQLite;
    # no busy timeout on the event loop: a call that finds the database locked waits for it in a thread
    # instead (bot/db/sqlite_loop.py), so a concurrent writer is ridden out without stalling the bot.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=0")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# PostgreSQL refusals that pass, by SQLSTATE class: a connection lost (08; a server restarting), a deadlock or
# serialization failure (40), a full disk or too many connections (53), the server shutting down (57), and
# a lock not available (55P03). They are what SQLite's "database is locked" and "disk full" are, so they
# raise what those do, OperationalError, which the JobManager waits out with a backoff (bot/jobs/manager.py).
_PG_PASSING_CLASSES = ("08", "40", "53", "57")


def _pg_refusal_is_operational(context: ExceptionContext) -> None:
    if isinstance(context.sqlalchemy_exception, OperationalError):
        return
    orig = context.original_exception
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    if context.is_disconnect or code[:2] in _PG_PASSING_CLASSES or code == "55P03":
        raise OperationalError(
            context.statement, context.parameters, orig, connection_invalidated=context.is_disconnect
        ) from orig


def _unreachable_is_operational(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    # A server that cannot be reached (down for a restart, the network) fails in the driver's connect with a
    # plain OSError, past SQLAlchemy's error handling: make it the same refusal as the ones above.
    try:
        return dialect.loaded_dbapi.connect(*cargs, **cparams)
    except OSError as exc:
        raise OperationalError(None, None, exc) from exc


class Sessions:
    """The stores' session factory: ``sessions()`` for reading, ``sessions.begin()`` for one write
    transaction.

    Write transactions take turns in this process. SQLite has one writer at a time, and writers on separate
    connections wait for each other in SQLite's busy handler, which sleeps up to 100 ms a try: in
    100-command bursts that put a second on the slowest intakes (BENCHMARKS.md, finding 3). An asyncio lock
    hands the turn over at once instead, and a cancelled task gives it back on the way out. Readers (WAL)
    never wait. PostgreSQL would let writers run side by side, but the turns cost it little and keep one
    behaviour on both."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._maker = async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)
        self._write_turn = asyncio.Lock()

    def __call__(self) -> AsyncSession:
        return self._maker()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        async with self._write_turn, self._maker.begin() as session:
            yield session

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a plain connection, for statements that need no ORM (each job's state
        changes): an ORM session's own machinery costs about 0.4 ms of CPU a transaction here."""
        async with self._write_turn, self._engine.begin() as conn:
            yield conn


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # A server (PostgreSQL) may restart under the bot: check a pooled connection before handing it out,
        # rather than fail the first request on each dead one.
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "do_connect", use_loop_connections)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "handle_error", _pg_refusal_is_operational)
            event.listen(self.engine.sync_engine, "do_connect", _unreachable_is_operational)
        self.sessions = Sessions(self.engine)

    async def migrate(self) -> None:
        """Apply pending migrations (``alembic upgrade head``) over this engine's connection."""

        def upgrade(conn: Connection) -> None:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()


def rows_matched(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE or DELETE matched. SQLAlchemy types ``execute()`` as a plain Result for
    every statement; for DML it is a CursorResult, which alone carries the count."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"not the result of an UPDATE or DELETE: {type(result).__name__}")
    return result.rowcount
