"""SQLite statements run on the event loop's thread; one that finds the database locked waits in a thread,
and the loop serves everyone else meanwhile (bot/db/sqlite_loop.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from bot.db import Database
from bot.db.sqlite_loop import _patiently, is_busy
from tests.waiting import wait_until


def _waiting_in_a_thread() -> bool:
    """Whether a thread other than this one is in ``_patiently``: a call waiting there for the lock."""
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        at: FrameType | None = frame
        while at is not None:
            if at.f_code is _patiently.__code__:
                return True
            at = at.f_back
    return False


def _database(path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(db.engine.sync_engine, "connect")
    def _thread_id_function(dbapi_conn: Any, _record: Any) -> None:
        # tid(): the thread that runs the statement calling it (the row written records where it ran).
        dbapi_conn.create_function("tid", 0, threading.get_ident)

    return db


async def _setup(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (name TEXT, tid INTEGER)"))


async def _insert(db: Database, name: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("INSERT INTO t VALUES (:name, tid())"), {"name": name})


async def _tids(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return {name: tid for name, tid in (await conn.execute(text("SELECT name, tid FROM t"))).all()}


async def test_statements_run_on_the_event_loops_thread(tmp_path):
    db = _database(tmp_path / "bot.db")
    try:
        await _setup(db)
        await _insert(db, "alice")
        assert (await _tids(db)) == {"alice": threading.get_ident()}
    finally:
        await db.close()


async def test_a_write_that_finds_the_database_locked_waits_in_a_thread_while_the_loop_serves_others(
    tmp_path,
):
    path = tmp_path / "bot.db"
    db = _database(path)
    try:
        await _setup(db)
        await _insert(db, "before")
        other = sqlite3.connect(path, isolation_level=None)  # another process's tool, holding the lock
        try:
            other.execute("BEGIN EXCLUSIVE")
            write = asyncio.create_task(_insert(db, "during"))
            await wait_until(_waiting_in_a_thread, "the write to wait for the lock in aiosqlite's thread")
            # The loop is free: a read (WAL: readers never wait for the writer) is answered meanwhile.
            assert set(await _tids(db)) == {"before"}
            assert not write.done()
            other.execute("ROLLBACK")
            await write
        finally:
            other.close()
        tids = await _tids(db)
        assert tids["during"] != threading.get_ident()  # it waited, and ran, in the thread
        await _insert(db, "after")  # and the next statement runs in place again
        assert (await _tids(db))["after"] == threading.get_ident()
    finally:
        await db.close()


async def test_a_lock_held_past_the_busy_timeout_is_an_operational_error(tmp_path, monkeypatch):
    monkeypatch.setattr("bot.db.sqlite_loop.BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "bot.db"
    db = _database(path)
    try:
        await _setup(db)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(OperationalError, match="locked"):
                await _insert(db, "never")
        finally:
            other.close()
        await _insert(db, "next")  # the connection is usable again, in place
        assert (await _tids(db)) == {"next": threading.get_ident()}
    finally:
        await db.close()


def test_only_busy_and_locked_refusals_count_as_busy(tmp_path):
    con = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.OperationalError) as missing:
        con.execute("SELECT * FROM nowhere")
    assert not is_busy(missing.value)
    con.close()
    holder = sqlite3.connect(tmp_path / "y.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiter = sqlite3.connect(tmp_path / "y.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        waiter.execute("CREATE TABLE t (x)")
    assert is_busy(locked.value)
    holder.close()
    waiter.close()
