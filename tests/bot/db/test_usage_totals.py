"""/usage's and /stats' totals on SQLite and on PostgreSQL: per user and guild, today and all time, the top
users by images (ties by id), failed and cancelled counts, the average queue wait."""

import datetime as dt

import pytest

from bot.db import Database, JobState
from bot.db.jobs import JobStore, SavedImage
from bot.db.usage import UsageStore
from tests.bot.jobrows import new_job

GUILD = 10
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
async def db(database_url):
    db = Database(database_url)
    await db.migrate()
    yield db
    await db.close()


async def _done(store, job_id, user_id, images, *, wait=0.0):
    created = NOW - dt.timedelta(minutes=5)
    job = new_job(id=job_id, guild_id=GUILD, user_id=user_id, count=images, created_at=created)
    await store.create(job, guild_name="g", user_name=f"user{user_id}")
    await store.transition(
        job_id, [JobState.QUEUED], JobState.RUNNING, started_at=created + dt.timedelta(seconds=wait)
    )
    pictures = [SavedImage(i, i, f"/{job_id}{i}.png", 64, 64) for i in range(images)]
    await store.finish(job_id, pictures, 2.0, "m")


async def test_user_and_guild_totals(db):
    store = JobStore(db.sessions)
    await _done(store, "a", 1, 3, wait=10)
    await _done(store, "b", 2, 3, wait=20)
    await _done(store, "c", 1, 1, wait=30)
    await store.create(new_job(id="f", guild_id=GUILD, user_id=2), user_name="user2")
    await store.transition("f", [JobState.QUEUED], JobState.FAILED, error="boom")
    await store.create(new_job(id="x", guild_id=GUILD, user_id=2), user_name="user2")
    await store.transition("x", [JobState.QUEUED], JobState.CANCELLED)
    usage = UsageStore(db.sessions)
    day = NOW - dt.timedelta(hours=1)

    mine = await usage.user_usage(GUILD, 1, today=day, month=day)
    assert (mine.today.images, mine.today.jobs, mine.all_time.engine_seconds) == (4, 2, 4.0)
    assert (await usage.user_usage(None, 1, today=day, month=day)).all_time.jobs == 0  # DMs: no guild

    stats = await usage.guild_stats(GUILD, today=day, wait_since=day)
    assert (stats.all_time.images, stats.users, stats.failed, stats.cancelled) == (7, 2, 1, 1)
    assert [(t.user_id, t.name, t.images) for t in stats.top] == [(1, "user1", 4), (2, "user2", 3)]
    assert stats.average_wait == pytest.approx(20.0)
