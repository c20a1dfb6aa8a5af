"""``python -m bot backup``: a consistent copy of the live database, and an archive of old images.

SQLite goes through its online backup API (one step, under a read lock: never a torn copy, and the bot
keeps writing); PostgreSQL through ``pg_dump`` (one snapshot; custom format, for ``pg_restore``), its
password handed over in ``PGPASSWORD``, never on the command line. The README says how to restore both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.engine import make_url

from engine.urls import redact


class BackupError(Exception):
    """Why no backup was made; the message never holds a password."""


def _fresh(dest: Path) -> None:
    if dest.exists():
        raise BackupError(f"{dest} already exists; give a new file name")
    dest.parent.mkdir(parents=True, exist_ok=True)


def backup_sqlite(database: str, dest: Path) -> None:
    """Copy the SQLite file ``database`` into ``dest`` while others may be writing it."""
    if not Path(database).is_file():
        raise BackupError(f"no SQLite database at {database!r}")
    _fresh(dest)
    partial = dest.with_name(dest.name + ".partial")
    source = sqlite3.connect(database, timeout=30)
    try:
        target = sqlite3.connect(partial)
        try:
            source.backup(target)  # every page in one step: one consistent picture
        finally:
            target.close()
    finally:
        source.close()
    partial.rename(dest)  # a crash mid-copy leaves a .partial, never a DEST that looks whole


def pg_dump_command(url: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    """``pg_dump``'s argv (host, port, user, database: no password) and environment for ``url``."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupError("pg_dump is not installed (Debian: apt-get install postgresql-client)")
    parts = make_url(url)
    argv = [pg_dump, "--format=custom", f"--file={dest}", "--no-password"]
    if parts.host:
        argv.append(f"--host={parts.host}")
    if parts.port:
        argv.append(f"--port={parts.port}")
    if parts.username:
        argv.append(f"--username={parts.username}")
    argv.append(f"--dbname={parts.database or ''}")
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(str(parts.password))
    return argv, env


async def backup_postgresql(url: str, dest: Path) -> None:
    _fresh(dest)
    partial = dest.with_name(dest.name + ".partial")
    argv, env = pg_dump_command(url, partial)
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        password = make_url(url).password
        message = err.decode(errors="replace").strip()[-1000:]
        if password:
            message = message.replace(str(password), "***")
        raise BackupError(f"pg_dump of {redact(url)} failed: {message}")
    partial.rename(dest)


async def backup(url: str, dest: Path) -> None:
    """A consistent backup of the database at ``url`` (SQLite or PostgreSQL) in ``dest``."""
    parts = make_url(url)
    if parts.get_backend_name() == "sqlite":
        await asyncio.to_thread(backup_sqlite, parts.database or "", dest)
    elif parts.get_backend_name() == "postgresql":
        await backup_postgresql(url, dest)
    else:
        raise BackupError(f"no backup for {parts.get_backend_name()} databases")


def _old_files(folder: Path, cutoff: float) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
            yield path


def archive_images(
    folder: Path, older_than_days: float, archive: Path, *, remove: bool = False, now: float | None = None
) -> list[Path]:
    """Put the files under ``folder`` last written more than ``older_than_days`` ago into the tar file
    ``archive`` (paths relative to ``folder``); with ``remove``, delete them once the archive is whole."""
    _fresh(archive)
    cutoff = (time.time() if now is None else now) - older_than_days * 86_400
    partial = archive.with_name(archive.name + ".partial")
    archived: list[Path] = []
    with tarfile.open(partial, "w") as tar:
        for path in _old_files(folder, cutoff):
            if path.resolve() in (archive.resolve(), partial.resolve()):
                continue
            tar.add(path, arcname=str(path.relative_to(folder)))
            archived.append(path)
    partial.rename(archive)
    if remove:
        for path in archived:
            path.unlink(missing_ok=True)
    return archived


def default_name(now: dt.datetime | None = None) -> str:
    return f"bot-{(now or dt.datetime.now(dt.UTC)):%Y%m%d-%H%M%S}"


def destination(dest: Path, backend: str) -> Path:
    """``dest``, or a dated file in it when it is a folder."""
    if dest.is_dir():
        return dest / (default_name() + (".db" if backend == "sqlite" else ".dump"))
    return dest
