"""A database with rows in every table (jobs with a variation of a finished job, images, usage, limits,
bans, blocked terms, the audit log), and a reader of every row, for the copy and backup tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.db import Base, Database
from bot.db.jobs import JobStore, SavedImage
from bot.db.moderation import ModerationStore
from tests.bot.jobrows import new_job

GUILD = 10


async def fill(db: Database, jobs: int = 3) -> list[str]:
    """Rows in every table of ``db`` (migrated); returns the ids of the jobs made, all done."""
    store, moderation = JobStore(db.sessions), ModerationStore(db.sessions)
    ids = []
    for i in range(jobs):
        parent = ids[-1] if ids else None
        job = new_job(
            id=f"job{jobs - i:02d}",  # each variation's id sorts before its parent's: copied before it
            guild_id=GUILD, channel_id=20, user_id=30 + i % 2, prompt=f"fox {i}", count=2,
            parent_job_id=parent, parent_index=0 if parent else None, seed=2**40 + i,
        )  # fmt: skip
        await store.create(job, guild_name="Guild", user_name=f"user{i % 2}")
        await store.start_attempt(job.id)
        images = [SavedImage(k, 2**40 + k, f"/img/{job.id}-{k}.png", 64, 64) for k in range(2)]
        await store.finish(job.id, images, 0.5 + i, "tiny")
        ids.append(job.id)
    await moderation.set_limit(GUILD, "guild", GUILD, "daily_images", 50, actor_id=1)
    await moderation.ban(GUILD, 99, "spam", actor_id=1)
    await moderation.add_term(GUILD, "gore", actor_id=1)
    return ids


async def every_row(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, by table, in primary-key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(row) for row in rows]
    return out
