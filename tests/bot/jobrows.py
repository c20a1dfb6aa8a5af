"""The one factory of ``jobs`` rows for tests (tests use it through the ``make_job`` fixture; plain helper
functions of a test module may call it directly)."""

from __future__ import annotations

import uuid
from typing import Any

from bot.db import Job


def new_job(**fields: Any) -> Job:
    """A new ``jobs`` row with every required field set to something plain; ``fields`` override them."""
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "guild_id": None,
        "channel_id": 1,
        "user_id": 1,
        "prompt": "a fox",
        "seed": 1,
        "steps": 2,
        "cfg_scale": 7.0,
        "sampler": "Euler",
        "width": 64,
        "height": 64,
        "count": 1,
    }
    values.update(fields)
    return Job(**values)
