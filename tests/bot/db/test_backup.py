"""``python -m bot backup``: a backup taken while jobs are being written restores, by the README's
procedure, to a database that ``alembic check`` accepts, holding every job done before it; old images go
into a tar archive."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from alembic import command
from sqlalchemy import func, select

from bot.db import Database, Image, Job, JobState, Usage
from bot.db.backup import backup
from bot.db.jobs import JobStore, SavedImage
from bot.db.session import alembic_config
from tests.bot.jobrows import new_job

ROOT = Path(__file__).resolve().parents[3]


def _restore(database_url: str, dump: Path, tmp_path: Path, request) -> str:
    """The README's restore procedure; returns the restored database's URL."""
    if database_url.startswith("sqlite"):
        restored = tmp_path / "restored" / "bot.db"
        restored.parent.mkdir()
        shutil.copyfile(dump, restored)  # with the bot stopped: the file is the whole database
        return f"sqlite+aiosqlite:///{restored}"
    server = request.getfixturevalue("pg_server")
    name = server.new_database()  # createdb -T template0 imagine_restored
    subprocess.run(
        [str(server.bin_dir / "pg_restore"), "--no-owner", "--exit-on-error", "-h", "127.0.0.1",
         "-p", str(server.port), "-U", "postgres", "-d", name, str(dump)],
        env={**os.environ, "PGPASSWORD": server.password}, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return server.url(name)


async def test_a_backup_taken_while_jobs_are_written_restores_with_every_job_done_before_it(
    database_url, tmp_path, request
):
    db = Database(database_url)
    await db.migrate()
    store = JobStore(db.sessions)
    done: list[str] = []
    enough, stop = asyncio.Event(), asyncio.Event()

    async def write_jobs() -> None:
        while not stop.is_set():
            job = new_job(guild_id=10, user_id=30, count=2)
            await store.create(job, guild_name="g", user_name="u")
            await store.start_attempt(job.id)
            images = [SavedImage(k, k, f"/i/{job.id}{k}.png", 64, 64) for k in (0, 1)]
            await store.finish(job.id, images, 1, "m")
            done.append(job.id)
            if len(done) >= 5:
                enough.set()

    writer = asyncio.create_task(write_jobs())
    try:
        await enough.wait()
        done_before = set(done)
        dump = tmp_path / "backup.db"
        await backup(database_url, dump)
        stop.set()
        await writer
    finally:
        stop.set()
        await asyncio.wait({writer})
        await db.close()

    restored_url = _restore(database_url, dump, tmp_path, request)
    restored = Database(restored_url)
    try:
        await restored.migrate()  # what the bot does at start: nothing to apply
        await asyncio.to_thread(command.check, alembic_config(restored_url))
        async with restored.sessions() as session:
            jobs = dict((await session.execute(select(Job.id, Job.state))).all())
            usage = dict((await session.execute(select(Usage.job_id, Usage.images))).all())
            images = dict(
                (await session.execute(select(Image.job_id, func.count()).group_by(Image.job_id))).all()
            )
    finally:
        await restored.close()
    finished = {job_id for job_id, state in jobs.items() if state is JobState.DONE}
    assert done_before <= finished
    # One consistent moment: a done job has its usage row and both images; a job caught between its
    # transactions is queued or running (a start picks it up again) and has neither.
    assert set(jobs.values()) <= {JobState.QUEUED, JobState.RUNNING, JobState.DONE}
    assert usage == dict.fromkeys(finished, 2) and images == dict.fromkeys(finished, 2)


def test_backup_command_copies_the_database_and_archives_old_images(tmp_path):
    db_path, out = tmp_path / "bot.db", tmp_path / "images"
    asyncio.run(_migrated(f"sqlite+aiosqlite:///{db_path}"))
    (out / "2026").mkdir(parents=True)
    old, new = out / "2026" / "old.png", out / "new.png"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    month_ago = time.time() - 31 * 86_400
    os.utime(old, (month_ago, month_ago))
    (tmp_path / "backups").mkdir()
    ours = ("DISCORD_", "DATABASE_URL", "OUTPUT_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "backup", str(tmp_path / "backups"), "--images-older-than", "30",
         "--archive", str(tmp_path / "old.tar"), "--remove-archived"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**env, "PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "t", "DATABASE_URL": f"sqlite:///{db_path}",
             "OUTPUT_DIR": str(out)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (copy,) = (tmp_path / "backups").iterdir()
    assert copy.suffix == ".db" and "archived and removed 1 files" in proc.stdout
    with tarfile.open(tmp_path / "old.tar") as tar:
        assert tar.getnames() == ["2026/old.png"]
    assert not old.exists() and new.exists()


async def _migrated(url: str) -> None:
    db = Database(url)
    await db.migrate()
    await db.close()
