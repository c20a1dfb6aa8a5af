"""The aggregates behind /usage and /stats: images and engine time per user and guild, top users, the
average queue wait, and images per UTC day and hour for their chart. Read-only; the rows are written with
each finished job (jobs.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from bot.db.models import Job, JobState, Usage, User
from bot.db.moderation import guild_is
from bot.db.session import Sessions


@dataclass(frozen=True, slots=True)
class Totals:
    images: int = 0
    engine_seconds: float = 0.0
    jobs: int = 0


@dataclass(frozen=True, slots=True)
class UserUsage:
    today: Totals
    month: Totals
    all_time: Totals


@dataclass(frozen=True, slots=True)
class TopUser:
    user_id: int
    name: str
    images: int


@dataclass(frozen=True, slots=True)
class GuildStats:
    all_time: Totals
    today: Totals
    users: int
    top: list[TopUser]
    average_wait: float | None  # seconds from queued to started
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class Activity:
    """Images per UTC day (oldest first, every day of the window, zeros included) and per UTC hour of
    the day (24 values) over the same window."""

    days: list[tuple[dt.date, int]]
    hours: list[int]


class utc_day(FunctionElement[str]):
    """A UTC timestamp's day as 'YYYY-MM-DD', in each database's own words."""

    type = String()
    inherit_cache = True


class utc_hour(FunctionElement[int]):
    """A UTC timestamp's hour of the day, 0-23."""

    type = Integer()
    inherit_cache = True


@compiles(utc_day)
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m-%d', {compiler.process(element.clauses, **kw)})"  # stored as UTC text


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_hour)
def _utc_hour_sqlite(element: utc_hour, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(strftime('%H', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(utc_hour, "postgresql")
def _utc_hour_postgresql(element: utc_hour, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        f"CAST(EXTRACT(HOUR FROM ({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC') AS INTEGER)"
    )


class UsageStore:
    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def _totals(self, session: AsyncSession, *where: ColumnElement[bool]) -> Totals:
        row = (
            await session.execute(
                select(
                    func.coalesce(func.sum(Usage.images), 0),
                    func.coalesce(func.sum(Usage.engine_seconds), 0.0),
                    func.count(),
                ).where(*where)
            )
        ).one()
        return Totals(int(row[0]), float(row[1]), int(row[2]))

    async def user_usage(
        self, guild_id: int | None, user_id: int, *, today: dt.datetime, month: dt.datetime
    ) -> UserUsage:
        """Totals since ``today`` and ``month`` (the window starts) and of all time."""
        base = (Usage.user_id == user_id, guild_is(Usage.guild_id, guild_id))
        async with self.sessions() as session:
            return UserUsage(
                today=await self._totals(session, *base, Usage.created_at >= today),
                month=await self._totals(session, *base, Usage.created_at >= month),
                all_time=await self._totals(session, *base),
            )

    async def guild_stats(
        self, guild_id: int, *, today: dt.datetime, wait_since: dt.datetime, top: int = 5
    ) -> GuildStats:
        """Totals, the top users by images, and the average queue wait of jobs since ``wait_since``."""
        async with self.sessions() as session:
            in_guild = Usage.guild_id == guild_id
            all_time = await self._totals(session, in_guild)
            today_totals = await self._totals(session, in_guild, Usage.created_at >= today)
            users = await session.scalar(select(func.count(func.distinct(Usage.user_id))).where(in_guild))
            leaders = await session.execute(
                select(Usage.user_id, func.coalesce(User.name, ""), func.sum(Usage.images).label("n"))
                .join(User, User.id == Usage.user_id, isouter=True)
                .where(in_guild)
                .group_by(Usage.user_id, User.name)
                .order_by(func.sum(Usage.images).desc(), Usage.user_id)
                .limit(top)
            )
            started = await session.execute(
                select(Job.created_at, Job.started_at).where(
                    Job.guild_id == guild_id, Job.started_at.is_not(None), Job.created_at >= wait_since
                )
            )
            waits = [(s - c).total_seconds() for c, s in started if s is not None and c is not None]
            states = dict(
                (
                    await session.execute(
                        select(Job.state, func.count())
                        .where(Job.guild_id == guild_id, Job.state.in_([JobState.FAILED, JobState.CANCELLED]))
                        .group_by(Job.state)
                    )
                ).all()
            )
        return GuildStats(
            all_time=all_time,
            today=today_totals,
            users=int(users or 0),
            top=[TopUser(int(u), str(n), int(c)) for u, n, c in leaders],
            average_wait=sum(waits) / len(waits) if waits else None,
            failed=int(states.get(JobState.FAILED, 0)),
            cancelled=int(states.get(JobState.CANCELLED, 0)),
        )

    async def activity(self, guild_id: int | None, *, since: dt.date, user_id: int | None = None) -> Activity:
        """Images per UTC day from ``since`` to today and per hour of the day over those days, in a guild
        (direct messages: None), of one member or of everyone."""
        where = [guild_is(Usage.guild_id, guild_id), Usage.created_at >= _midnight(since)]
        if user_id is not None:
            where.append(Usage.user_id == user_id)
        images = func.sum(Usage.images)
        day, hour = utc_day(Usage.created_at), utc_hour(Usage.created_at)
        async with self.sessions() as session:
            per_day = dict((await session.execute(select(day, images).where(*where).group_by(day))).all())
            per_hour = dict((await session.execute(select(hour, images).where(*where).group_by(hour))).all())
        today = dt.datetime.now(dt.UTC).date()
        days = [since + dt.timedelta(days=i) for i in range((today - since).days + 1)]
        return Activity(
            days=[(d, int(per_day.get(d.isoformat()) or 0)) for d in days],
            hours=[int(per_hour.get(h) or 0) for h in range(24)],
        )


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)
