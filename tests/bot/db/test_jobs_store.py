import sqlite3

import pytest

from bot.db import Database, JobState
from bot.db.jobs import JobStore, SavedImage
from tests.bot.jobrows import new_job


@pytest.fixture
async def store(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await db.migrate()
    yield JobStore(db.sessions)
    await db.close()


def _job(job_id="j1", **kw):
    return new_job(
        **{"id": job_id, "guild_id": 10, "channel_id": 20, "user_id": 30, "prompt": "cat", "count": 2, **kw}
    )


async def test_migrations_create_every_table_and_are_idempotent(tmp_path):
    path = tmp_path / "bot.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    await db.migrate()  # a second start applies nothing and breaks nothing
    await db.close()
    tables = {
        r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master where type='table'")
    }
    assert {"guilds", "users", "jobs", "images", "usage", "alembic_version"} <= tables


async def test_finish_is_counted_once(store):
    await store.create(_job(), guild_name="g", user_name="u")
    assert await store.start_attempt("j1") == 1
    assert await store.start_attempt("j1") is None  # not queued any more
    images = [SavedImage(0, 1, "/x/0.png", 64, 64), SavedImage(1, 2, "/x/1.png", 64, 64)]
    assert await store.finish("j1", images, 1.5, "tiny")
    assert not await store.finish("j1", images, 1.5, "tiny")  # a duplicate result changes nothing
    job = await store.get("j1")
    assert job.state is JobState.DONE and [i.seed for i in job.images] == [1, 2]
    assert await store.images_since(30, 10, job.created_at.replace(year=2000)) == 2


async def test_recovery_queries(store):
    await store.create(_job("a"))
    await store.create(_job("b"))
    await store.start_attempt("b")
    await store.create(_job("c"))
    await store.start_attempt("c")
    await store.finish("c", [], 0.1, "m")
    assert [j.id for j in await store.unfinished()] == ["a", "b"]
    assert [j.id for j in await store.undelivered()] == ["c"]
    await store.mark_delivered("c", 555)
    assert await store.undelivered() == []
    assert (await store.by_message(555)).id == "c"
