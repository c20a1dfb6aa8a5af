"""The chart's aggregates: images per UTC day and per UTC hour, on SQLite and on PostgreSQL (each database
says "day" and "hour" in its own words: bot/db/usage.py)."""

import datetime as dt

import pytest

from bot.db import Database
from bot.db.jobs import JobStore, SavedImage
from bot.db.models import Usage
from bot.db.usage import UsageStore
from tests.bot.jobrows import new_job


@pytest.fixture
async def db(database_url):
    db = Database(database_url)
    await db.migrate()
    yield db
    await db.close()


async def made(db, job_id, user_id, guild_id, images, at):
    """A finished job of ``images`` pictures, counted at ``at`` (UTC)."""
    store = JobStore(db.sessions)
    job = new_job(id=job_id, guild_id=guild_id, channel_id=1, user_id=user_id, prompt="kite", count=images)
    await store.create(job)
    await store.start_attempt(job_id)
    await store.finish(job_id, [SavedImage(i, i, f"/x/{i}.png", 64, 64) for i in range(images)], 1.0, "m")
    async with db.sessions.begin() as session:
        row = (await session.execute(Usage.__table__.select().where(Usage.job_id == job_id))).one()
        await session.execute(Usage.__table__.update().where(Usage.id == row.id).values(created_at=at))


async def test_images_per_utc_day_and_hour(db):
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = (today - dt.timedelta(days=29)).date()
    await made(db, "a", 1, 10, 3, today + dt.timedelta(minutes=5))  # today 00:05
    await made(db, "b", 2, 10, 2, today - dt.timedelta(days=2, minutes=30))  # 3 days ago 23:30
    await made(db, "c", 1, 10, 4, today - dt.timedelta(days=2, hours=1, minutes=-10))  # same day 23:10
    await made(db, "d", 1, 11, 5, today)  # another guild
    await made(db, "e", 1, 10, 6, today - dt.timedelta(days=40))  # before the window
    usage = UsageStore(db.sessions)

    guild = await usage.activity(10, since=since)
    assert len(guild.days) == 30 and guild.days[0][0] == since and guild.days[-1][0] == today.date()
    per_day = dict(guild.days)
    assert per_day[today.date()] == 3 and per_day[(today - dt.timedelta(days=3)).date()] == 6
    assert sum(per_day.values()) == 9
    assert guild.hours[0] == 3 and guild.hours[23] == 6 and sum(guild.hours) == 9

    mine = await usage.activity(10, since=since, user_id=1)
    assert sum(n for _, n in mine.days) == 7 and mine.hours[23] == 4 and mine.hours[0] == 3
