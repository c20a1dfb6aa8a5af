"""INSERT ... ON CONFLICT DO UPDATE in the session's own dialect (SQLite and PostgreSQL spell it alike, but
SQLAlchemy builds it from each dialect's ``insert``): one round trip, no read-modify-write race."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from bot.db.models import Base


def upsert(
    session: AsyncSession,
    model: type[Base],
    values: Mapping[str, Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    update: Mapping[str, Any],
) -> Insert:
    """Insert ``values`` into ``model``'s table; where a row with the same ``keys`` exists, set ``update``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(model).values(**values)
        return pg.on_conflict_do_update(index_elements=list(keys), set_=dict(update))
    if dialect == "sqlite":
        lite = sqlite.insert(model).values(**values)
        return lite.on_conflict_do_update(index_elements=list(keys), set_=dict(update))
    raise NotImplementedError(f"no upsert for the {dialect} dialect")
