"""The job store on SQLite and on a real PostgreSQL server (``database_url`` runs each test on both)."""

import asyncio
import datetime as dt
import time

import pytest
from alembic import command
from sqlalchemy import event, inspect, select
from sqlalchemy.exc import IntegrityError

from bot.db import Database, Guild, Job, JobState, User
from bot.db.jobs import JobStore, SavedImage
from bot.db.session import alembic_config
from tests.bot.jobrows import new_job


@pytest.fixture
async def db(database_url):
    db = Database(database_url)
    await db.migrate()
    yield db
    await db.close()


@pytest.fixture
def store(db):
    return JobStore(db.sessions)


def _job(job_id="j1", **kw):
    return new_job(
        **{"id": job_id, "guild_id": 10, "channel_id": 20, "user_id": 30, "prompt": "cat", "count": 2, **kw}
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    return request.getfixturevalue("pg_url")


async def test_migrations_create_every_table_match_the_models_and_are_idempotent(empty_database_url):
    database_url = empty_database_url
    db = Database(database_url)
    await db.migrate()
    await db.migrate()  # a second start applies nothing and breaks nothing
    async with db.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    await db.close()
    assert {"guilds", "users", "jobs", "images", "usage", "alembic_version"} <= tables
    # `alembic check`: the migrated schema is exactly the models' (types, indexes, constraints).
    await asyncio.to_thread(command.check, alembic_config(database_url))


async def test_finish_is_counted_once(store):
    await store.create(_job(), guild_name="g", user_name="u")
    assert await store.start_attempt("j1") == 1
    assert await store.start_attempt("j1") is None  # not queued any more
    images = [SavedImage(0, 1, "/x/0.png", 64, 64), SavedImage(1, 2, "/x/1.png", 64, 64)]
    finished = await store.finish("j1", images, 1.5, "tiny")
    assert await store.finish("j1", images, 1.5, "tiny") is None  # a duplicate result changes nothing
    job = await store.get("j1")
    assert job.state is JobState.DONE and [i.seed for i in job.images] == [1, 2]
    # Timestamps come back aware on both databases (SQLite's came back naive, PostgreSQL's aware).
    assert job.created_at.tzinfo is not None and job.finished_at.utcoffset() == dt.timedelta(0)
    # What finish hands back (the JobManager posts it without reading the row again) is the row as read.
    assert finished is not None
    for column in Job.__table__.columns:
        assert getattr(finished, column.key) == getattr(job, column.key), column.key
    recorded = [(i.index, i.seed, i.path, i.width, i.height, i.nsfw) for i in job.images]
    assert [(i.index, i.seed, i.path, i.width, i.height, i.nsfw) for i in finished.images] == recorded
    assert await store.images_since(30, 10, job.created_at.replace(year=2000)) == 2


async def test_a_result_delivered_twice_at_once_through_two_connections_finishes_the_job_once(
    database_url, store
):
    # Two bot processes' worth of connections (a redelivered NATS result racing the first): the
    # conditional UPDATE lets exactly one of them record the images and the usage row.
    await store.create(_job(), guild_name="g", user_name="u")
    await store.start_attempt("j1")
    other = Database(database_url)
    try:
        images = [SavedImage(0, 1, "/x/0.png", 64, 64)]
        results = await asyncio.gather(
            store.finish("j1", images, 1.0, "m"), JobStore(other.sessions).finish("j1", images, 1.0, "m")
        )
    finally:
        await other.close()
    assert sorted(r is not None for r in results) == [False, True]
    assert await store.images_since(30, 10, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == 1


async def test_people_are_inserted_once_and_their_names_refreshed(db, store):
    await store.create(_job("a"), guild_name="Old guild", user_name="old")
    await store.create(_job("b"), guild_name="New guild", user_name="new")
    async with db.sessions() as session:
        assert list(await session.scalars(select(Guild.name))) == ["New guild"]
        assert list(await session.scalars(select(User.name))) == ["new"]


async def test_a_members_next_job_writes_the_job_alone_until_a_name_changes(db, store):
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0] + " " + statement.split()[2])

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await store.create(_job("a"), guild_name="Guild", user_name="ann")
        first = len(statements)
        await store.create(_job("b"), guild_name="Guild", user_name="ann")
        assert statements[first:] == ["INSERT jobs"]
        # The member renamed herself: her row is written again, the guild's is not.
        await store.create(_job("c"), guild_name="Guild", user_name="anne")
        assert statements[first + 1 :] == ["INSERT users", "INSERT jobs"]
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    async with db.sessions() as session:
        assert list(await session.scalars(select(User.name))) == ["anne"]


async def test_a_failed_job_write_remembers_no_names(db, store):
    # The job insert fails (a duplicate id): the transaction rolls back, so the names were not written and
    # the next job must write them (on PostgreSQL a job row needs its member's row).
    await store.create(_job("a"), guild_name="Guild", user_name="ann")
    with pytest.raises(IntegrityError):
        await store.create(_job("a", guild_id=11, user_id=31), guild_name="Other", user_name="bob")
    await store.create(_job("b", guild_id=11, user_id=31), guild_name="Other", user_name="bob")
    async with db.sessions() as session:
        assert sorted(await session.scalars(select(User.name))) == ["ann", "bob"]


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


@pytest.fixture
def far_from_utc(monkeypatch):
    """The machine's local time zone is UTC-5/-4 for the test (a bot host need not run in UTC)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_timestamps_are_utc_whatever_the_machine_zone_or_the_value_zone(store, far_from_utc):
    noon = dt.datetime(2026, 5, 4, 12, 0)
    await store.create(_job("naive", created_at=noon))  # naive: UTC by this schema's rule
    await store.create(_job("paris", created_at=noon.replace(tzinfo=dt.timezone(dt.timedelta(hours=2)))))
    assert (await store.get("naive")).created_at == noon.replace(tzinfo=dt.UTC)
    assert (await store.get("paris")).created_at == dt.datetime(2026, 5, 4, 10, 0, tzinfo=dt.UTC)
