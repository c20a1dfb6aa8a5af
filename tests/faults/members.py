"""What every fault scenario needs: a club of members in channels, /imagine as they type it, and the
closing check that no job was lost, none is stuck, and each was delivered exactly once (or given up with
its author told).

The scenarios run the real bot (discord.py on the loopback Discord, the real JobManager, SQLite through
the migrations, engine worker processes on the tiny model); these helpers only read what the bot left:
the fake's messages and the ``jobs`` table.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.waiting import wait_until

PICTURE_EXTENSIONS = ("png", "webp", "jpg")
FINAL_STATES = {"done", "failed", "cancelled"}


@dataclass
class Club:
    fake: Any
    guild: Any
    channels: dict[str, Any]
    members: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, fake: Any, channels: tuple[str, ...], members: tuple[str, ...]) -> Club:
        guild = fake.add_guild("Fault Club")
        club = cls(fake, guild, {name: fake.add_channel(guild, name) for name in channels})
        for name in members:
            club.members[name] = user = fake.add_user(name)
            fake.add_member(guild, user)
        return club

    async def imagine(self, member: str, channel: str, prompt: str, **options: Any) -> Any:
        """``/imagine`` as ``member`` types it; returns the interaction once the bot acknowledged it
        publicly (the "thinking…" that becomes the job's reply), as it must whatever fault is going on."""
        inter = await self.fake.invoke(
            "imagine",
            {"prompt": prompt, "count": 1, **options},
            guild=self.guild,
            channel=self.channels[channel],
            user=self.members[member],
        )
        await inter.wait_response()
        assert inter.deferred and not inter.ephemeral, inter.callbacks
        return inter


def jobs(db_path: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return [
            dict(row)
            for row in con.execute(
                "select id, user_id, channel_id, prompt, state, attempts, interaction_id, result_message_id,"
                " delivered_at, undeliverable, delivery_attempts from jobs order by created_at"
            )
        ]
    finally:
        con.close()


def job_of(db_path: Path, inter: Any) -> dict[str, Any] | None:
    return next((j for j in jobs(db_path) if j["interaction_id"] == inter.id), None)


async def recorded(db_path: Path, inter: Any) -> dict[str, Any]:
    """The job row of ``inter``, once the bot has written it (it acknowledges first, then records)."""
    await wait_until(lambda: job_of(db_path, inter) is not None, f"the job of interaction {inter.id}")
    row = job_of(db_path, inter)
    assert row is not None
    return row


def picture_posts(fake: Any, job_id: str) -> list[Any]:
    """Visible messages carrying the job's result picture (named after the job; previews are not)."""
    names = {f"{job_id}.{ext}" for ext in PICTURE_EXTENSIONS}
    return [m for m in fake.messages if not m.deleted and any(a.filename in names for a in m.attachments)]


def has_result(fake: Any, db_path: Path, inter: Any) -> bool:
    job = job_of(db_path, inter)
    return job is not None and bool(picture_posts(fake, job["id"]))


def dms(fake: Any, user: Any) -> list[str]:
    dm = fake.dm_channel(user)
    return [m.content for m in fake.messages if m.channel_id == dm.id and not m.deleted]


def all_settled(db_path: Path) -> bool:
    """Every job finished, and delivered or given up."""
    rows = jobs(db_path)
    return all(
        j["state"] in FINAL_STATES and (j["delivered_at"] is not None or j["undeliverable"] is not None)
        for j in rows
    )


def assert_nothing_lost(fake: Any, db_path: Path, accepted: int) -> list[dict[str, Any]]:
    """The closing check, made after the bot stopped (so a late duplicate post would already be there):
    ``accepted`` jobs, each finished; each done one posted exactly once, where its row says, or given up
    with its author told by DM and nothing posted. Returns the rows."""
    rows = jobs(db_path)
    assert len(rows) == accepted, [(j["prompt"], j["state"]) for j in rows]
    for job in rows:
        assert job["state"] in FINAL_STATES, job
        posts = picture_posts(fake, job["id"])
        if job["undeliverable"] is not None:
            assert job["delivered_at"] is None and posts == [], job
            author = fake.users.get(job["user_id"])
            assert author is not None and any(job["id"] in d for d in dms(fake, author)), job
            continue
        assert job["delivered_at"] is not None, job
        if job["state"] == "done":
            assert [m.id for m in posts] == [job["result_message_id"]], (job, [m.id for m in posts])
    return rows
