"""A PostgreSQL server that drops the bot's connection (restarting, shutting down) refuses the way a locked
SQLite file does, with OperationalError, which the JobManager waits out; the next try gets a new
connection."""

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from bot.db import Database, Job
from bot.db.jobs import JobStore
from tests.bot.jobrows import new_job
from tests.pg import free_port


async def test_a_dropped_postgresql_connection_is_an_operational_error_and_the_next_try_works(
    pg_migrated_url, pg_server
):
    db = Database(pg_migrated_url)
    try:
        store = JobStore(db.sessions)
        async with db.sessions() as session:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            pg_server.psql(f"SELECT pg_terminate_backend({pid})")  # what a server restart does to it
            with pytest.raises(OperationalError):
                await session.execute(select(Job.id))
        await store.create(new_job(id="after"))  # a new connection
        assert (await store.get("after")) is not None
    finally:
        await db.close()


async def test_a_postgresql_server_that_cannot_be_reached_is_an_operational_error():
    db = Database(f"postgresql+asyncpg://bot:s3cret@127.0.0.1:{free_port()}/imagine")  # nothing listens
    try:
        with pytest.raises(OperationalError) as refused:
            await JobStore(db.sessions).get("any")
    finally:
        await db.close()
    assert "s3cret" not in str(refused.value)
