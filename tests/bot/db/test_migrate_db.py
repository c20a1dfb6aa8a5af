"""``python -m bot migrate-db``: an SQLite database with rows in every table copied into a real PostgreSQL
server holds the same rows, takes new rows after them, and is not overwritten without --force."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from bot.db import Database
from bot.db.migrate_db import MigrateError, migrate_db
from bot.db.moderation import ModerationStore
from tests.bot.db.filled import GUILD, every_row, fill

ROOT = Path(__file__).resolve().parents[3]


async def test_sqlite_with_data_copied_into_postgresql_has_the_same_rows(tmp_path, pg_server, pg_url):
    lite_url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    lite = Database(lite_url)
    await lite.migrate()
    await fill(lite)
    before = await every_row(lite)
    await lite.close()
    assert all(before.values()), before  # every table has rows

    # As an admin runs it: the password in PGPASSWORD, never on the command line.
    url_without_password = pg_url.replace(f":{pg_server.password}@", "@")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "migrate-db", "--from", f"sqlite:///{tmp_path / 'bot.db'}",
        "--to", url_without_password.replace("postgresql+asyncpg://", "postgresql://"),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PGPASSWORD": pg_server.password},
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    assert "jobs: 3 rows" in out and pg_server.password not in out

    pg = Database(pg_url)
    try:
        assert await every_row(pg) == before
        # The sequences moved past the copied ids: new rows get new ids.
        await ModerationStore(pg.sessions).record(GUILD, 1, "job.cancel", "job:x")
        audit = (await every_row(pg))["audit_log"]
        assert len(audit) == len(before["audit_log"]) + 1
    finally:
        await pg.close()

    with pytest.raises(MigrateError, match=r"already holds rows: .*jobs \(3\).*--force"):
        await migrate_db(lite_url, pg_url, say=lambda _: None)
    await migrate_db(lite_url, pg_url, force=True, batch=2, say=lambda _: None)  # several batches a table
    pg = Database(pg_url)
    try:
        assert await every_row(pg) == before  # replaced, the extra audit row gone
    finally:
        await pg.close()


def test_a_password_on_the_command_line_is_refused_without_echoing_it(capsys):
    from bot.db.commands import main

    with pytest.raises(SystemExit) as refused:
        main(["migrate-db", "--from", "sqlite:///x.db", "--to", "postgresql://u:hunter2@h/db"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "PGPASSWORD" in err and "hunter2" not in err


def test_a_refused_login_is_one_line_without_the_password(tmp_path, pg_server, pg_url, monkeypatch, capsys):
    from bot.db.commands import main

    lite = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    asyncio.run(lite.migrate())
    asyncio.run(lite.close())
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    target = pg_url.replace(f":{pg_server.password}@", "@")
    assert main(["migrate-db", "--from", f"sqlite:///{tmp_path / 'bot.db'}", "--to", target]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nothing copied: ") and "password" in err[0], err
    assert "not-the-password" not in err[0] and pg_server.password not in err[0]
