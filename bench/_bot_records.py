"""What the bot under load left behind: its probe lines and its SQLite jobs table."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any


def read_probe(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def ts(value: str | None) -> float | None:
    """A timestamp column of the bot's SQLite database as epoch seconds (stored UTC, maybe without zone)."""
    if not value:
        return None
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def jobs_from_db(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "select id, interaction_id, state, error, created_at, started_at, finished_at, engine_seconds,"
            " count, prompt, negative_prompt, seed, steps, cfg_scale, width, height, sampler,"
            " attempts, result_message_id from jobs order by created_at"
        ).fetchall()
    finally:
        db.close()
    return [dict(r) for r in rows]
