"""SQLAlchemy 2 models. The schema changes only through an Alembic migration in migrations/versions."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from engine.protocol import JobKind


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Every timestamp here is UTC, and comes back aware on every database. SQLite keeps no zone (a subclass
    of DateTime would not do: SQLite's dialect swaps in its own DATETIME and drops the subclass's methods,
    which handed SQLite's timestamps back naive while PostgreSQL's were aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        # Naive means UTC here (asyncpg would read it as the machine's local time); another zone's wall clock
        # becomes UTC's (SQLite would store it as if it were UTC).
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


# Stable constraint names so Alembic batch migrations on SQLite can find them later.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class Guild(Base):
    __tablename__ = "guilds"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The model /imagine uses in this guild when a member names none (set by an admin); None: MODEL.
    default_model: Mapped[str | None] = mapped_column(String(200))


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """One /imagine (or reroll, variation, upscale): every parameter, its state and its delivery."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(ForeignKey("guilds.id"), index=True)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[JobKind] = mapped_column(
        Enum(JobKind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=JobKind.TXT2IMG,
    )
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    cfg_scale: Mapped[float] = mapped_column(Float)
    sampler: Mapped[str] = mapped_column(String(40))
    # A1111's schedule type and clip skip (engine/protocol.py GenerateRequest says what the values mean).
    scheduler: Mapped[str] = mapped_column(String(40), default="Automatic", server_default="Automatic")
    clip_skip: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(200))
    strength: Mapped[float | None] = mapped_column(Float)
    init_image_path: Mapped[str | None] = mapped_column(String(500))  # img2img / upscale input, saved first
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    parent_index: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # Run the safety checker on this job's images (set at admission: SAFETY_CHECKER on, channel not NSFW).
    safety_check: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=JobState.QUEUED,
        index=True,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    engine_seconds: Mapped[float | None] = mapped_column(Float)
    # Delivery: the reply the user saw, and whether the result reached Discord. A finished job with
    # delivered_at NULL is posted again after a restart, so nothing is silently lost.
    interaction_id: Mapped[int | None] = mapped_column(BigInteger)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    result_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Failed deliveries: how many so far, when the redelivery sweep may try again (it backs off), and,
    # once Discord refused for good or the tries ran out, why (the sweep then leaves the job alone).
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_delivery_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    undeliverable: Mapped[str | None] = mapped_column(String(200))

    images: Mapped[list[Image]] = relationship(
        back_populates="job", order_by="Image.index", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Flagged by the safety checker: kept on disk, never posted.
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    job: Mapped[Job] = relationship(back_populates="images")

    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_images_job_index"),)


class Usage(Base):
    """One row per finished job; the unique job_id is what makes counting idempotent."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    guild_id: Mapped[int | None] = mapped_column(ForeignKey("guilds.id"))
    images: Mapped[int] = mapped_column(Integer)
    engine_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_usage_user_created", "user_id", "created_at"),
        Index("ix_usage_guild_created", "guild_id", "created_at"),
    )


# ------------------------------------------------------------------------------ limits and moderation
# Keyed by Discord ids without foreign keys: an admin can configure a guild (or ban a user) before the
# guild or the user ever made a job, so there may be no guilds/users row to point at.


class LimitOverride(Base):
    """One admin-set limit: for the whole guild, a role, or one user (bot/jobs/limits.py resolves them)."""

    __tablename__ = "limit_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    scope: Mapped[str] = mapped_column(String(8))  # guild | role | user
    target_id: Mapped[int] = mapped_column(BigInteger)  # the guild, role or user id
    name: Mapped[str] = mapped_column(String(32))
    value: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("guild_id", "scope", "target_id", "name", name="uq_limit_overrides_target"),
    )


class Ban(Base):
    __tablename__ = "bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(500), default="")
    banned_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("guild_id", "user_id", name="uq_bans_guild_user"),)


class BlockedTerm(Base):
    """A word, phrase or ``/regex/`` refused in prompts of one guild."""

    __tablename__ = "blocked_terms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    term: Mapped[str] = mapped_column(String(200))
    added_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("guild_id", "term", name="uq_blocked_terms_guild_term"),)


class AuditEntry(Base):
    """Every admin change: who, when, what, and the value before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32))  # limits.set, ban, blocklist.add, job.cancel, ...
    target: Mapped[str] = mapped_column(String(200))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_audit_log_guild_created", "guild_id", "created_at"),)
