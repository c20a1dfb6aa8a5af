"""The message that follows a job from queued to posted (an interaction's reply, or the bot's own
status message for a 🔄 reaction), and the edits made to it.

Progress edits are throttled and dropped when one is still in flight; the final result waits its turn
(``lock``) and is never dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import discord

from bot.cogs.common import edit
from engine import bounds

log = logging.getLogger(__name__)

# What an interaction's defer returned (None when Discord said nothing more): it names the deferred message.
Deferred: TypeAlias = discord.InteractionCallbackResponse[Any] | None

TOKEN_SAFE_AGE = dt.timedelta(minutes=14)  # Discord kills interaction tokens at 15 minutes
PROGRESS_MIN_INTERVAL = 1.5  # seconds between progress edits of one message (rate limits: 5 per 5 s)
DEFAULT_UPLOAD_LIMIT = bounds.UPLOAD_BYTES  # Discord's per-file limit without boosts


@dataclass(slots=True)
class LiveReply:
    """The message that tells a user about their job: an interaction's reply, or (for 🔄 reactions,
    which have no interaction) a plain channel message of the bot's."""

    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    headline: str = ""  # the first line of every status edit, kept here so progress needs no database read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_edit: float = 0.0
    finished: bool = False

    def wants_progress(self) -> bool:
        """Whether a progress edit now would be shown (not throttled, not busy, not finished)."""
        return (
            not self.finished
            and not self.lock.locked()
            and self.alive()
            and time.monotonic() - self.last_edit >= PROGRESS_MIN_INTERVAL
        )

    def alive(self) -> bool:
        if self.interaction is not None:
            return discord.utils.utcnow() - self.interaction.created_at < TOKEN_SAFE_AGE
        return self.message is not None

    @property
    def upload_limit(self) -> int:
        if self.interaction is not None:
            return self.interaction.filesize_limit or DEFAULT_UPLOAD_LIMIT
        guild = self.message.guild if self.message is not None else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def edit(self, **fields: object) -> discord.Message:
        target = self.interaction if self.interaction is not None else self.message
        assert target is not None
        return await edit(target, **fields)


def is_dead_token(exc: discord.HTTPException) -> bool:
    # 50027: Invalid Webhook Token (expired); 10015: Unknown Webhook; 10062: Unknown interaction.
    return exc.status in (401, 404) or exc.code in (50027, 10015, 10062)


async def edit_progress(reply: LiveReply, **fields: object) -> None:
    """A best-effort status edit: skipped while another edit runs or if the last one was too recent."""
    if not reply.wants_progress():
        return
    async with reply.lock:
        if reply.finished:
            return
        reply.last_edit = time.monotonic()
        try:
            await reply.edit(**fields)
        except discord.HTTPException as exc:
            log.debug("progress edit failed: %s", exc)


async def edit_status(reply: LiveReply, **fields: object) -> None:
    """A status edit that is not throttled (queued, started), still skipped once the job finished."""
    async with reply.lock:
        if reply.finished or not reply.alive():
            return
        reply.last_edit = time.monotonic()
        try:
            await reply.edit(**fields)
        except discord.HTTPException as exc:
            log.debug("status edit failed: %s", exc)
