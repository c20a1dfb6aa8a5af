"""SQLite statements run on the event loop's own thread, with aiosqlite's thread kept for waiting on a lock.

aiosqlite hands every call (cursor, execute, fetch, close, commit) to a thread of its own and back: about
four hand-offs a statement, seventy a job. Each one wakes a thread and passes the GIL back and forth, which
on a busy machine cost more than the statements themselves: a sampling profile of the bot under load had a
quarter of its event loop's CPU in aiosqlite's queue ``put`` alone (BENCHMARKS.md, 2026-12-03). This bot's
statements are indexed, touch a few rows, and commit to a WAL without an fsync (``synchronous=NORMAL``), so
running them in place takes microseconds.

What must never run in place is a wait: another process (an admin's ``sqlite3`` shell, a second bot on the
same file by mistake) may hold the write lock. So the connection's busy timeout is 0 on the loop; a call
that finds the database locked is handed to aiosqlite's thread, which runs it again there with the usual
busy timeout, and the loop goes on serving everyone else meanwhile.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

# How long a call that found the database locked waits for it in aiosqlite's thread (what SQLite's busy
# handler does for every call on an ordinary connection).
BUSY_TIMEOUT_MS = 5000
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


def _patiently(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """``fn`` on aiosqlite's thread, waiting out a lock for up to BUSY_TIMEOUT_MS as SQLite's busy handler
    does; the loop's calls go back to not waiting afterwards."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        return fn()
    finally:
        conn.execute("PRAGMA busy_timeout=0")


class LoopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the calling thread, except one that finds the database
    locked (see the module's docstring). The sqlite3 connection is opened with ``check_same_thread=False``:
    it is used by one caller at a time, either here or, while that caller awaits, in aiosqlite's thread."""

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        call = functools.partial(fn, *args, **kwargs)
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        # Called again in full: a statement refused with SQLITE_BUSY did nothing, a COMMIT refused with it
        # left the transaction open, so either can simply be tried again.
        return await super()._execute(_patiently, self._connection, call)


def connect(*args: Any, **kwargs: Any) -> LoopConnection:
    """What SQLAlchemy's aiosqlite adapter awaits for a new connection (its ``async_creator_fn``), given
    the ``sqlite3.connect`` arguments the dialect made from the database URL."""
    kwargs["check_same_thread"] = False
    kwargs["timeout"] = 0  # the busy timeout in place: never wait on the loop (the pragmas repeat it)
    conn = LoopConnection(functools.partial(sqlite3.connect, *args, **kwargs), iter_chunk_size=64)
    conn._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections: no hang at exit
    return conn


def use_loop_connections(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """A ``do_connect`` listener: open the engine's SQLite connections as :class:`LoopConnection`."""
    return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=connect, **cparams)
