"""Getting job news onto Discord without ever losing a result.

While the interaction token is young the bot edits its own reply; after that (tokens die at 15
minutes, and after a restart there is no token at all) it posts a channel message replying to the
author. Progress edits are throttled and dropped when one is still in flight; the final result waits
its turn and is never dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import discord

from bot.db.models import Job, JobState

log = logging.getLogger(__name__)

TOKEN_SAFE_AGE = dt.timedelta(minutes=14)  # Discord kills interaction tokens at 15 minutes
PROGRESS_MIN_INTERVAL = 1.5  # seconds between progress edits of one message (rate limits: 5 per 5 s)
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit without boosts


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
        if self.interaction is not None:
            return await self.interaction.edit_original_response(**fields)  # type: ignore[arg-type]
        assert self.message is not None
        return await self.message.edit(**fields)  # type: ignore[arg-type]


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


async def find_posted(client: discord.Client, job: Job, content: str) -> discord.Message | None:
    """A result that a previous run already put on Discord but was killed before recording it
    (between the upload and writing ``delivered_at``): the job's own status message, or a message of
    the bot's in the channel since the job was made, carrying the job's picture or, for a job that
    failed or was cancelled, saying exactly ``content`` (the notice it would post). Best effort: without
    history access it returns None and the result is posted (again)."""
    if client.user is None:
        return None
    me = client.user.id

    def carries(message: discord.Message) -> bool:
        if message.author.id != me:
            return False
        if job.state is JobState.DONE:
            return any(a.filename.startswith(f"{job.id}.") for a in message.attachments)
        # A notice has no picture to name the job: only the job's own status message, or a channel post
        # replying to it, can be its notice (another job's identical notice must not count).
        own = message.id == job.status_message_id or (
            message.reference is not None and message.reference.message_id == job.status_message_id
        )
        return bool(job.status_message_id) and own and message.content == content

    channel = client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
    if job.status_message_id:
        try:
            status = await channel.fetch_message(job.status_message_id)
            if carries(status):
                return status
        except discord.HTTPException as exc:  # deleted meanwhile: the channel may still hold the result
            log.debug("status message of job %s is gone: %s", job.id, exc)
    try:
        since = discord.Object(discord.utils.time_snowflake(job.created_at))
        async for message in channel.history(limit=100, after=since):
            if carries(message):
                return message
    except discord.HTTPException as exc:
        log.debug("could not look for an earlier post of job %s: %s", job.id, exc)
    return None
