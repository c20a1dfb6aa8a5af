"""Queries behind limits and moderation: overrides, bans, blocked terms, the audit log, and the activity
admission counts (the aggregates for /usage and /stats are in usage.py).

Every admin change is written together with its audit entry in one transaction: either both are there
or neither is. Values cross this boundary as plain data (strings and ints); their meaning lives in
bot/jobs/limits.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    SQLColumnExpression,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AuditEntry, Ban, BlockedTerm, Guild, Job, JobState, LimitOverride, Usage, utcnow
from bot.db.session import Sessions, rows_matched

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True, slots=True)
class OverrideRow:
    scope: str
    target_id: int
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class BanRow:
    user_id: int
    reason: str
    banned_by: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AuditRow:
    actor_id: int
    action: str
    target: str
    old_value: str | None
    new_value: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class GuildRules:
    """What admission needs to know about one guild and one user, read in one session."""

    overrides: list[OverrideRow]
    ban: BanRow | None
    terms: list[str]
    default_model: str | None = None  # the model /imagine uses here when a member names none


@dataclass(frozen=True, slots=True)
class Activity:
    """One user's recent activity in a guild, for quotas."""

    active_jobs: int  # queued or running
    active_images: int  # images those jobs will make
    images_today: int  # finished since the start of the day
    last_job_at: dt.datetime | None
    queued_total: int  # queued jobs across every guild (the global QUEUE_CAP)
    guild_queued: int  # queued jobs of this guild, every member's (its share of QUEUE_CAP)
    queued_guilds: frozenset[int | None]  # the guilds with jobs queued (None: direct messages)
    known_job_ids: frozenset[str]  # which of the asked-about job ids exist (admission's reservations)


def guild_is(column: SQLColumnExpression[int | None], guild_id: int | None) -> ColumnElement[bool]:
    # `col == None` renders IS NULL: direct messages have no guild.
    return column == guild_id


@functools.cache
def _activity_query(*, direct_messages: bool) -> Select[int, int, int, dt.datetime | None]:
    """A member's active jobs and images, images today, and last job, as one statement of scalar
    subqueries, built once (parameters: user_id, guild_id, day_start). It runs for every /imagine: building
    it each time cost more than running it (3.8 against 1.6 ms of CPU, BENCHMARKS.md 2026-12-03)."""
    user_id: BindParameter[int] = bindparam("user_id")
    day_start: BindParameter[dt.datetime] = bindparam("day_start")

    def here(column: SQLColumnExpression[int | None]) -> ColumnElement[bool]:
        # Direct messages have no guild: IS NULL, which a bound NULL would not match.
        return column.is_(None) if direct_messages else column == bindparam("guild_id")

    mine = (Job.user_id == user_id, here(Job.guild_id))
    active = (*mine, Job.state.in_(ACTIVE))
    return select(
        select(func.count()).select_from(Job).where(*active).scalar_subquery(),
        select(func.coalesce(func.sum(Job.count), 0)).where(*active).scalar_subquery(),
        select(func.coalesce(func.sum(Usage.images), 0))
        .where(Usage.user_id == user_id, here(Usage.guild_id), Usage.created_at >= day_start)
        .scalar_subquery(),
        select(func.max(Job.created_at)).where(*mine).scalar_subquery(),
    )


# Queued jobs per guild: at most QUEUE_CAP rows, as the cap bounds the queue.
_QUEUED_PER_GUILD = (
    select(Job.guild_id, func.count()).where(Job.state == JobState.QUEUED).group_by(Job.guild_id)
)


@dataclass(frozen=True, slots=True)
class _GuildRuleSet:
    overrides: list[OverrideRow]
    bans: dict[int, BanRow]
    terms: list[str]
    default_model: str | None


class ModerationStore:
    """One per bot process, and the only writer of overrides, bans and blocked terms: that is what lets it
    keep each guild's rules in memory (read on every /imagine) and drop them on its own writes."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self._rules: dict[int, _GuildRuleSet] = {}
        self._generation: dict[int, int] = {}

    # ------------------------------------------------------------------------------- admission

    async def rules(self, guild_id: int | None, user_id: int) -> GuildRules:
        if guild_id is None:
            return GuildRules([], None, [])
        ruleset = self._rules.get(guild_id)
        if ruleset is None:
            ruleset = await self._load_rules(guild_id)
        return GuildRules(
            list(ruleset.overrides), ruleset.bans.get(user_id), list(ruleset.terms), ruleset.default_model
        )

    async def _load_rules(self, guild_id: int) -> _GuildRuleSet:
        generation = self._generation.get(guild_id, 0)
        async with self.sessions() as session:
            overrides = await session.execute(
                select(LimitOverride.scope, LimitOverride.target_id, LimitOverride.name, LimitOverride.value)
                .where(LimitOverride.guild_id == guild_id)
                .order_by(LimitOverride.id)
            )
            bans = await session.scalars(select(Ban).where(Ban.guild_id == guild_id))
            terms = await session.scalars(
                select(BlockedTerm.term).where(BlockedTerm.guild_id == guild_id).order_by(BlockedTerm.id)
            )
            default_model = await session.scalar(select(Guild.default_model).where(Guild.id == guild_id))
            ruleset = _GuildRuleSet(
                [OverrideRow(*row) for row in overrides],
                {b.user_id: BanRow(b.user_id, b.reason, b.banned_by, b.created_at) for b in bans},
                list(terms),
                default_model,
            )
        # A write that began while this read ran may or may not be in it: keep it only if none did.
        if self._generation.get(guild_id, 0) == generation:
            self._rules[guild_id] = ruleset
        return ruleset

    def _changed(self, guild_id: int) -> None:
        self._generation[guild_id] = self._generation.get(guild_id, 0) + 1
        self._rules.pop(guild_id, None)

    @contextlib.asynccontextmanager
    async def _write(self, guild_id: int) -> AsyncIterator[AsyncSession]:
        """A transaction that changes ``guild_id``'s rules. The cached rules are dropped before it (so a
        read racing it is not kept) and after its commit (so the next read sees it)."""
        self._changed(guild_id)
        try:
            async with self.sessions.begin() as session:
                yield session
        finally:
            self._changed(guild_id)

    async def activity(
        self, guild_id: int | None, user_id: int, day_start: dt.datetime, job_ids: Sequence[str] = ()
    ) -> Activity:
        query = _activity_query(direct_messages=guild_id is None)
        values = {"user_id": user_id, "guild_id": guild_id, "day_start": day_start}
        async with self.sessions() as session:
            active_jobs, active_images, today, last = (await session.execute(query, values)).one()
            queued: dict[int | None, int] = {g: int(n) for g, n in await session.execute(_QUEUED_PER_GUILD)}
            known: set[str] = set()
            if job_ids:
                known = set(await session.scalars(select(Job.id).where(Job.id.in_(list(job_ids)))))
        if isinstance(last, str):  # func.max loses the column type on SQLite: parse it back
            last = dt.datetime.fromisoformat(last)
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=dt.UTC)
        return Activity(
            int(active_jobs or 0),
            int(active_images or 0),
            int(today or 0),
            last,
            sum(queued.values()),
            queued.get(guild_id, 0),
            frozenset(queued),
            frozenset(known),
        )

    # --------------------------------------------------------------------------------- limits

    async def overrides(self, guild_id: int) -> list[OverrideRow]:
        return (await self.rules(guild_id, 0)).overrides

    @staticmethod
    async def _override(
        session: AsyncSession, guild_id: int, scope: str, target_id: int, name: str
    ) -> LimitOverride | None:
        return await session.scalar(
            select(LimitOverride).where(
                LimitOverride.guild_id == guild_id,
                LimitOverride.scope == scope,
                LimitOverride.target_id == target_id,
                LimitOverride.name == name,
            )
        )

    async def set_limit(
        self, guild_id: int, scope: str, target_id: int, name: str, value: int, *, actor_id: int
    ) -> int | None:
        """Set an override; returns the value it replaced (None: there was none)."""
        async with self._write(guild_id) as session:
            row = await self._override(session, guild_id, scope, target_id, name)
            old = None if row is None else row.value
            if row is None:
                session.add(
                    LimitOverride(
                        guild_id=guild_id,
                        scope=scope,
                        target_id=target_id,
                        name=name,
                        value=value,
                        updated_by=actor_id,
                        updated_at=utcnow(),
                    )
                )
            else:
                row.value, row.updated_by, row.updated_at = value, actor_id, utcnow()
            self._audit(session, guild_id, actor_id, "limits.set", f"{scope}:{target_id} {name}", old, value)
            return old

    async def reset_limit(
        self, guild_id: int, scope: str, target_id: int, name: str, *, actor_id: int
    ) -> int | None:
        """Remove an override; returns the value it had (None: there was nothing to remove)."""
        async with self._write(guild_id) as session:
            row = await self._override(session, guild_id, scope, target_id, name)
            if row is None:
                return None
            old = row.value
            await session.delete(row)
            self._audit(session, guild_id, actor_id, "limits.reset", f"{scope}:{target_id} {name}", old, None)
            return old

    # ----------------------------------------------------------------------------------- bans

    async def ban(self, guild_id: int, user_id: int, reason: str, *, actor_id: int) -> BanRow | None:
        """Ban a user; returns the existing ban instead when there already is one (nothing changes)."""
        async with self._write(guild_id) as session:
            existing = await session.scalar(
                select(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id)
            )
            if existing is not None:
                return BanRow(existing.user_id, existing.reason, existing.banned_by, existing.created_at)
            session.add(
                Ban(
                    guild_id=guild_id, user_id=user_id, reason=reason, banned_by=actor_id, created_at=utcnow()
                )
            )
            self._audit(session, guild_id, actor_id, "ban", f"user:{user_id}", None, reason or "banned")
            return None

    async def unban(self, guild_id: int, user_id: int, *, actor_id: int) -> bool:
        async with self._write(guild_id) as session:
            existing = await session.scalar(
                select(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id)
            )
            if existing is None:
                return False
            await session.delete(existing)
            self._audit(
                session, guild_id, actor_id, "unban", f"user:{user_id}", existing.reason or "banned", None
            )
            return True

    # ---------------------------------------------------------------------------- blocklist

    async def terms(self, guild_id: int) -> list[str]:
        return (await self.rules(guild_id, 0)).terms

    async def add_term(self, guild_id: int, term: str, *, actor_id: int) -> bool:
        """False when the guild already blocks exactly this term."""
        async with self._write(guild_id) as session:
            exists = await session.scalar(
                select(BlockedTerm.id).where(BlockedTerm.guild_id == guild_id, BlockedTerm.term == term)
            )
            if exists is not None:
                return False
            session.add(BlockedTerm(guild_id=guild_id, term=term, added_by=actor_id, created_at=utcnow()))
            self._audit(session, guild_id, actor_id, "blocklist.add", "term", None, term)
            return True

    async def remove_term(self, guild_id: int, term: str, *, actor_id: int) -> bool:
        async with self._write(guild_id) as session:
            result = await session.execute(
                delete(BlockedTerm).where(BlockedTerm.guild_id == guild_id, BlockedTerm.term == term)
            )
            if rows_matched(result) == 0:
                return False
            self._audit(session, guild_id, actor_id, "blocklist.remove", "term", term, None)
            return True

    # ------------------------------------------------------------------------------ default model

    async def set_default_model(
        self, guild_id: int, guild_name: str, model: str | None, *, actor_id: int
    ) -> str | None:
        """Set (or with None, clear) the guild's default model; returns the one it replaced."""
        async with self._write(guild_id) as session:
            old = await session.scalar(select(Guild.default_model).where(Guild.id == guild_id))
            await session.execute(
                sqlite_insert(Guild)
                .values(id=guild_id, name=guild_name[:100], created_at=utcnow(), default_model=model)
                .on_conflict_do_update(index_elements=[Guild.id], set_={"default_model": model})
            )
            self._audit(session, guild_id, actor_id, "model.default", "guild", old, model)
            return old

    # -------------------------------------------------------------------------------- audit

    @staticmethod
    def _audit(
        session: AsyncSession,
        guild_id: int,
        actor_id: int,
        action: str,
        target: str,
        old: object,
        new: object,
    ) -> None:
        session.add(
            AuditEntry(
                guild_id=guild_id,
                actor_id=actor_id,
                action=action,
                target=target[:200],
                old_value=None if old is None else str(old),
                new_value=None if new is None else str(new),
                created_at=utcnow(),
            )
        )

    async def record(
        self, guild_id: int, actor_id: int, action: str, target: str, old: object = None, new: object = None
    ) -> None:
        """An audit entry for an action that changes nothing here (an admin cancelling a job)."""
        async with self.sessions.begin() as session:
            self._audit(session, guild_id, actor_id, action, target, old, new)

    async def audit_log(self, guild_id: int, limit: int = 10) -> list[AuditRow]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.guild_id == guild_id)
                .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
                .limit(limit)
            )
            return [
                AuditRow(r.actor_id, r.action, r.target, r.old_value, r.new_value, r.created_at) for r in rows
            ]

    async def bans(self, guild_id: int) -> list[BanRow]:
        async with self.sessions() as session:
            rows = await session.scalars(select(Ban).where(Ban.guild_id == guild_id).order_by(Ban.created_at))
            return [BanRow(r.user_id, r.reason, r.banned_by, r.created_at) for r in rows]
