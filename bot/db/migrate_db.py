"""``python -m bot migrate-db``: copy a database (an existing SQLite file) into another (PostgreSQL).

The target is migrated to head first; the source must be at head too (start the bot on it once). Rows go
table by table in foreign-key order, in batches, inside one target transaction: a failure leaves the target
as it was. A table pointing at itself (a variation's parent job) gets that column once all its rows are
in, so no row waits on one copied after it. PostgreSQL's id sequences are then moved past the copied ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    Table,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Base
from bot.db.session import Database, alembic_config
from engine.urls import redact

BATCH = 1000


class MigrateError(Exception):
    """Why nothing was copied; the message never holds a password."""


def _check_source_exists(url: str) -> None:
    # Opening a missing SQLite file would create an empty one.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").expanduser().is_file():
        raise MigrateError(f"no SQLite database at {parsed.database!r}")


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _head(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


async def _row_counts(conn: AsyncConnection, tables: Sequence[Table]) -> dict[str, int]:
    return {
        t.name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one()) for t in tables
    }


def _self_references(table: Table) -> list[Column[Any]]:
    return [fk.parent for fk in table.foreign_keys if fk.column.table is table]


async def _copy_table(source: AsyncConnection, target: AsyncConnection, table: Table, batch: int) -> int:
    (key,) = table.primary_key.columns  # every table here has a one-column primary key
    later = _self_references(table)
    pending: dict[str, list[dict[str, Any]]] = {c.name: [] for c in later}
    copied, last = 0, None
    while True:
        query = select(table).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        rows = [dict(r._mapping) for r in await source.execute(query)]  # timestamps aware (UTCDateTime)
        if not rows:
            break
        for name, pairs in pending.items():
            pairs.extend({"k": r[key.name], "v": r[name]} for r in rows if r[name] is not None)
        await target.execute(table.insert(), [{**r, **dict.fromkeys(pending)} for r in rows])
        copied += len(rows)
        last = rows[-1][key.name]
    # Every row is in now, so each one a row points at (in any batch) is there.
    for name, pairs in pending.items():
        if pairs:
            set_later = update(table).where(key == bindparam("k")).values({name: bindparam("v")})
            await target.execute(set_later, pairs)
    return copied


async def _reset_sequences(target: AsyncConnection, tables: Sequence[Table]) -> None:
    for table in tables:
        (key,) = table.primary_key.columns
        if not isinstance(key.type, Integer) or key.autoincrement is False:  # Discord ids: no sequence
            continue
        serial = await target.scalar(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": key.name}
        )
        if serial is None:
            continue
        await target.execute(
            text(
                f'SELECT setval(:s, COALESCE((SELECT MAX("{key.name}") FROM "{table.name}"), 0) + 1, false)'
            ),
            {"s": serial},
        )


async def migrate_db(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    batch: int = BATCH,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Copy every row of ``source_url`` into ``target_url``; returns the rows copied per table."""
    tables = Base.metadata.sorted_tables  # parents before children
    _check_source_exists(source_url)
    source, target = Database(source_url), Database(target_url)
    try:
        async with source.engine.connect() as src:
            revision = await src.run_sync(_revision)
            if revision != _head(source_url):
                raise MigrateError(
                    f"the source {redact(source_url)} is at revision {revision or 'none'}, not the latest"
                    f" ({_head(source_url)}): start the bot on it once (it migrates at start), then copy"
                )
        say(f"migrating {redact(target_url)} to the latest schema")
        await target.migrate()
        async with source.engine.connect() as src, target.engine.begin() as dst:
            await src.begin()  # one read transaction: a consistent picture of the source
            present = {name: n for name, n in (await _row_counts(dst, tables)).items() if n}
            if present and not force:
                listed = ", ".join(f"{name} ({n})" for name, n in present.items())
                raise MigrateError(f"the target already holds rows: {listed}; --force replaces them")
            for table in reversed(tables):
                await dst.execute(delete(table))
            copied: dict[str, int] = {}
            for table in tables:
                copied[table.name] = await _copy_table(src, dst, table, batch)
                say(f"{table.name}: {copied[table.name]} rows")
            if dst.dialect.name == "postgresql":
                await _reset_sequences(dst, tables)
            if await _row_counts(dst, tables) != await _row_counts(src, tables):
                raise MigrateError("the copy's row counts differ from the source's; nothing was kept")
        return copied
    finally:
        await source.close()
        await target.close()
