"""Job queries. Every state transition is a conditional UPDATE (``WHERE state IN ...``), so a transition
applied twice (a result delivered twice, a restart racing a worker) changes the row once. That one statement
is also the claim: on PostgreSQL a second UPDATE of the row waits for the first and then finds the state
moved, so no job is taken by a SELECT first and no ``FOR UPDATE`` lock is needed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Guild, Image, Job, JobState, Usage, User, utcnow
from bot.db.session import Sessions, rows_matched
from bot.db.upsert import upsert

# The tables themselves, for the statements each job runs: an UPDATE or INSERT through the ORM entity goes
# through the ORM's bulk paths (synchronizing a session that holds nothing), which cost this bot's hottest
# statements about twice the CPU of the plain statement (BENCHMARKS.md, 2026-12-03).
JOBS = Job.metadata.tables[Job.__tablename__]
IMAGES = Job.metadata.tables[Image.__tablename__]
USAGE = Job.metadata.tables[Usage.__tablename__]


@dataclass(frozen=True, slots=True)
class SavedImage:
    index: int
    seed: int
    path: str
    width: int
    height: int
    nsfw: bool = False  # flagged by the safety checker: kept on disk, never posted


class JobStore:
    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        # (table, id) -> the name this process last committed for it. Every /imagine names its guild and
        # member; writing them again only when a name changed takes two statements off each intake.
        self._people: dict[tuple[str, int], str] = {}

    async def _ensure_people(
        self, session: AsyncSession, guild_id: int | None, guild_name: str, user_id: int, user_name: str
    ) -> list[tuple[tuple[str, int], str]]:
        """Insert, or refresh the name of, the guild and the user (one round trip each, no race) unless
        this process already committed that name; returns what to remember once the transaction commits."""
        written: list[tuple[tuple[str, int], str]] = []
        rows: list[tuple[type[Guild] | type[User], int, str]] = [(User, user_id, user_name[:100])]
        if guild_id is not None:
            rows.insert(0, (Guild, guild_id, guild_name[:100]))
        for table, row_id, name in rows:
            key = (table.__tablename__, row_id)
            if self._people.get(key) == name:
                continue
            await session.execute(
                upsert(
                    session,
                    table,
                    {"id": row_id, "name": name, "created_at": utcnow()},
                    [table.id],
                    {"name": name},
                )
            )
            written.append((key, name))
        return written

    async def create(self, job: Job, *, guild_name: str = "", user_name: str = "") -> Job:
        async with self.sessions.begin() as session:
            written = await self._ensure_people(session, job.guild_id, guild_name, job.user_id, user_name)
            session.add(job)
        if len(self._people) > 50_000:  # bounded: a cleared cache costs one upsert per name, once
            self._people.clear()
        self._people.update(written)
        return job

    async def get(self, job_id: str) -> Job | None:
        async with self.sessions() as session:
            return await session.get(Job, job_id)

    async def by_message(self, message_id: int) -> Job | None:
        async with self.sessions() as session:
            result = await session.execute(select(Job).where(Job.result_message_id == message_id))
            return result.scalars().first()

    async def transition(
        self, job_id: str, from_states: Iterable[JobState], to: JobState, **values: object
    ) -> bool:
        """Move a job between states; False when it was not in one of ``from_states`` (already moved)."""
        now = utcnow()
        if to is JobState.RUNNING:
            values.setdefault("started_at", now)
        if to.finished:
            values.setdefault("finished_at", now)
        async with self.sessions.write() as conn:
            result = await conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state.in_(list(from_states)))
                .values(state=to, **values)
            )
            return rows_matched(result) == 1

    async def start_attempt(self, job_id: str) -> int | None:
        """queued → running, counting the attempt; returns the attempt number, None if not queued."""
        async with self.sessions.write() as conn:
            result = await conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state == JobState.QUEUED)
                .values(state=JobState.RUNNING, started_at=utcnow(), attempts=JOBS.c.attempts + 1)
                .returning(JOBS.c.attempts)
            )
            row = result.first()
            return None if row is None else int(row[0])

    async def undo_attempt(self, job_id: str) -> bool:
        """running → queued, the attempt uncounted: the job never reached a worker."""
        return await self.transition(
            job_id, [JobState.RUNNING], JobState.QUEUED, started_at=None, attempts=Job.attempts - 1
        )

    async def finish(
        self, job_id: str, images: Sequence[SavedImage], engine_seconds: float, model: str
    ) -> Job | None:
        """running → done with its images and one usage row, in one transaction; the job as recorded (read
        back by the UPDATE itself: no second query), or None if it was already done."""
        async with self.sessions.write() as conn:
            result = await conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state.in_([JobState.RUNNING, JobState.QUEUED]))
                .values(
                    state=JobState.DONE,
                    finished_at=utcnow(),
                    engine_seconds=engine_seconds,
                    model=model or JOBS.c.model,
                    error=None,
                )
                .returning(*JOBS.c)
            )
            row = result.first()
            if row is None:
                return None
            now = utcnow()
            rows = [
                {
                    "job_id": job_id,
                    "index": i.index,
                    "seed": i.seed,
                    "path": i.path,
                    "width": i.width,
                    "height": i.height,
                    "nsfw": i.nsfw,
                    "created_at": now,
                }
                for i in sorted(images, key=lambda i: i.index)
            ]
            if rows:
                await conn.execute(insert(IMAGES), rows)
            await conn.execute(
                insert(USAGE).values(
                    job_id=job_id,
                    user_id=row.user_id,
                    guild_id=row.guild_id,
                    images=len(images),
                    engine_seconds=engine_seconds,
                    created_at=now,
                )
            )
        finished = Job(**row._mapping)
        finished.images = [Image(**r) for r in rows]
        return finished

    async def mark_delivered(self, job_id: str, message_id: int | None) -> None:
        async with self.sessions.write() as conn:
            await conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id)
                .values(delivered_at=utcnow(), result_message_id=message_id, next_delivery_at=None)
            )

    async def delivery_failed(self, job_id: str, retry_at: dt.datetime) -> int:
        """Count a failed delivery and hold the job back until ``retry_at``; returns the attempts so far."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(delivery_attempts=Job.delivery_attempts + 1, next_delivery_at=retry_at)
                .returning(Job.delivery_attempts)
            )
            row = result.first()
            return 0 if row is None else int(row[0])

    async def mark_undeliverable(self, job_id: str, reason: str) -> None:
        """Give up on delivering a job: the sweep no longer picks it up (``reason`` says why, for admins)."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.delivered_at.is_(None))
                .values(undeliverable=reason[:200], next_delivery_at=None)
            )

    async def set_status_message(
        self, job_id: str, interaction_id: int | None, message_id: int | None
    ) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(interaction_id=interaction_id, status_message_id=message_id)
            )

    async def unfinished(self) -> list[Job]:
        """Jobs a restart must pick up again, oldest first."""
        async with self.sessions() as session:
            result = await session.execute(
                select(Job).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING])).order_by(Job.created_at)
            )
            return list(result.scalars())

    async def undelivered(self, due_by: dt.datetime | None = None) -> list[Job]:
        """Finished jobs whose result never reached Discord and that are not given up on; with ``due_by``,
        only those whose back-off has run out by then (the sweep), else all of them (a start)."""
        conditions = _awaiting_delivery()
        if due_by is not None:
            conditions.append(or_(Job.next_delivery_at.is_(None), Job.next_delivery_at <= due_by))
        async with self.sessions() as session:
            result = await session.execute(select(Job).where(*conditions).order_by(Job.finished_at))
            return list(result.scalars())

    async def undelivered_count(self) -> int:
        """How many of :meth:`undelivered` there are (the redelivery backlog /metrics shows)."""
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).where(*_awaiting_delivery())) or 0)

    async def images_since(self, user_id: int, guild_id: int | None, since: dt.datetime) -> int:
        async with self.sessions() as session:
            result = await session.execute(
                select(func.coalesce(func.sum(Usage.images), 0)).where(
                    Usage.user_id == user_id, Usage.guild_id == guild_id, Usage.created_at >= since
                )
            )
            return int(result.scalar_one())


def _awaiting_delivery() -> list[ColumnElement[bool]]:
    """Finished, never delivered, not given up on."""
    return [
        Job.state.in_([JobState.DONE, JobState.FAILED, JobState.CANCELLED]),
        Job.delivered_at.is_(None),
        Job.undeliverable.is_(None),
    ]
