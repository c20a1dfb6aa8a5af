"""Getting job news onto Discord without ever losing a result.

The :class:`Courier` owns the live replies (the message each running job is shown in), turns the
JobManager's events into edits of them, and posts each finished job exactly once. While the interaction
token is young the bot edits its own reply; after that (tokens die at 15 minutes, and after a restart
there is no token at all) it posts a channel message replying to the author. A job is marked delivered
only once Discord accepted the message; undelivered ones are swept again every minute and on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.cogs.imagine import _texts as texts
from bot.cogs.imagine._actions import REROLL_EMOJI as REROLL
from bot.cogs.imagine._replies import (
    DEFAULT_UPLOAD_LIMIT,
    LiveReply,
    edit_progress,
    edit_status,
    is_dead_token,
)
from bot.cogs.imagine._submit import Prepared, submit
from bot.cogs.imagine._views import cancel_view, result_view
from bot.db.models import Job, JobState
from bot.jobs.events import JobDispatched, JobFinished, JobProgress, JobQueued, ManagerEvent
from bot.render import fit, grid, placeholder

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

REDELIVERY_INTERVAL = 60.0

Files = Callable[[int], Awaitable[list[discord.File]]]


class Courier:
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.live: dict[str, LiveReply] = {}
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        bot.jobs.subscribe(self.on_job_event)

    def start_sweeping(self) -> None:
        self.spawn(self._redelivery_loop())

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------- starting

    async def start(
        self,
        interaction: discord.Interaction,
        prepared: Prepared,
        *,
        deferred: discord.InteractionCallbackResponse | None = None,
    ) -> None:
        """Acknowledge at once (Discord's 3 s), then record and queue the job. ``deferred``: the command
        already deferred (it had network or database work to do first), and this is Discord's answer."""
        if interaction.response.is_done():
            callback = deferred
        else:
            callback = await interaction.response.defer(thinking=True)
        job = prepared.job
        # Registered before submitting: the job may start (and even finish) before submit returns.
        reply = self.live[job.id] = LiveReply(interaction=interaction, headline=texts.headline(job))
        try:
            ticket = await submit(
                self.bot,
                prepared,
                status_message_id=callback.message_id if callback else None,
                interaction_id=interaction.id,
            )
        except Exception:
            self.live.pop(job.id, None)
            log.exception("submitting job %s failed", job.id)
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content="❌ Sorry, I couldn't queue that; please try again."
                )
            return
        if ticket.job.state is JobState.QUEUED:
            await edit_status(
                reply,
                content=texts.queued(ticket.job, ticket.position, ticket.eta_seconds),
                view=cancel_view(job.id),
            )

    async def start_with_message(self, status: discord.Message, prepared: Prepared) -> None:
        """Queue a job whose news goes to a message of the bot's own (a reaction has no interaction)."""
        job = prepared.job
        reply = self.live[job.id] = LiveReply(message=status, headline=texts.headline(job))
        ticket = await submit(self.bot, prepared, status_message_id=status.id)
        if ticket.job.state is JobState.QUEUED:
            await edit_status(
                reply,
                content=texts.queued(ticket.job, ticket.position, ticket.eta_seconds),
                view=cancel_view(job.id),
            )

    # -------------------------------------------------------------------------------------- events

    async def on_job_event(self, event: ManagerEvent) -> None:
        # Never block the JobManager's event pump on Discord: each piece of news runs as its own task.
        self.spawn(self._handle(event))

    async def _handle(self, event: ManagerEvent) -> None:
        if isinstance(event, JobProgress):
            reply = self.live.get(event.job_id)
            if reply is not None:
                await self._progress(reply, event)
        elif isinstance(event, JobDispatched):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(
                    reply,
                    content=f"{texts.headline(event.job)}\n🎨 Starting…",
                    view=cancel_view(event.job.id),
                )
        elif isinstance(event, JobQueued):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(reply, content=texts.queued(event.job, event.position, event.eta_seconds))
        elif isinstance(event, JobFinished):
            await self.deliver(event.job)

    async def _progress(self, reply: LiveReply, event: JobProgress) -> None:
        if not reply.wants_progress():
            return  # most steps: nothing to show yet, so no work at all
        content = f"{reply.headline}\n🎨 Step {event.step}/{event.total}"
        if event.preview:
            await edit_progress(
                reply, content=content, attachments=[discord.File(io.BytesIO(event.preview), "preview.webp")]
            )
        else:
            await edit_progress(reply, content=content)

    # ------------------------------------------------------------------------------------ delivery

    async def deliver(self, job: Job) -> None:
        """Post a finished job's outcome once; record where it went so a restart does not repeat it."""
        if job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            await self._deliver(job)
        finally:
            self._delivering.discard(job.id)

    async def _deliver(self, job: Job) -> None:
        reply = self.live.pop(job.id, None)
        picture: bytes | None = None
        view: discord.ui.View | None = None
        headline = texts.headline(job)
        if job.state is JobState.DONE:
            # Pictures the safety checker flagged are never posted; a dark tile keeps U1–U4 in place.
            pngs = await asyncio.to_thread(
                lambda: [
                    placeholder(i.width, i.height) if i.nsfw else Path(i.path).read_bytes()
                    for i in job.images
                ]
            )
            content = f"{headline}\n{texts.describe(job)}"
            flagged = sum(1 for i in job.images if i.nsfw)
            if flagged:
                content += (
                    f"\n🔞 {flagged} of {len(job.images)} pictures were held back by the safety checker "
                    "(this channel is not marked NSFW)."
                )
            if flagged < len(job.images):
                picture = await asyncio.to_thread(grid, pngs)
                view = result_view(job)
        elif job.state is JobState.CANCELLED:
            content = f"{headline}\n🚫 Cancelled."
        else:
            content = f"{headline}\n❌ Sorry, that failed: {job.error or 'unknown error'}"
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])

        async def files(limit: int) -> list[discord.File]:
            if picture is None:
                return []
            if len(picture) <= limit:  # the usual case: no re-encoding, so no hop to a thread
                data, ext = picture, "png"
            else:
                data, ext = await asyncio.to_thread(fit, picture, limit)
            return [discord.File(io.BytesIO(data), f"{job.id}.{ext}")]

        message: discord.Message | None = None
        if reply is not None and reply.alive():
            async with reply.lock:
                reply.finished = True
                try:
                    message = await reply.edit(
                        content=content,
                        attachments=await files(reply.upload_limit),
                        view=view,
                        allowed_mentions=mentions,
                    )
                except discord.HTTPException as exc:
                    if not is_dead_token(exc):
                        log.warning(
                            "editing the reply for job %s failed (%s); posting in the channel", job.id, exc
                        )
        if message is None and reply is None:
            message = await find_posted(self.bot, job, content)  # a run killed before recording it
        if message is None:
            message = await self._post_in_channel(job, content, files, view, mentions)
        if message is None:
            return  # stays undelivered in the database; the redelivery sweep or the next start retries
        await self.bot.jobs.mark_delivered(job.id, message.id)
        if job.state is JobState.DONE:
            try:
                await message.add_reaction(REROLL)
            except discord.HTTPException as exc:
                log.info("could not add the %s reaction to %s: %s", REROLL, message.id, exc)

    async def _post_in_channel(
        self,
        job: Job,
        content: str,
        files: Files,
        view: discord.ui.View | None,
        mentions: discord.AllowedMentions,
    ) -> discord.Message | None:
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reference = None
        if job.status_message_id:
            reference = discord.MessageReference(
                message_id=job.status_message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        limit = guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
        kwargs: dict[str, Any] = {}
        if view is not None:
            kwargs["view"] = view
        try:
            return await channel.send(
                content=content,
                files=await files(limit),
                allowed_mentions=mentions,
                reference=reference,  # type: ignore[arg-type]  # discord.py types it as non-optional
                **kwargs,
            )
        except discord.HTTPException as exc:
            log.error("could not post job %s in channel %s: %s", job.id, job.channel_id, exc)
            return None

    async def _redelivery_loop(self) -> None:
        """Results Discord refused (an outage, a missing permission) are tried again, not forgotten."""
        while True:
            await asyncio.sleep(REDELIVERY_INTERVAL)
            try:
                for job in await self.bot.store.undelivered():
                    if job.id not in self._delivering and job.id not in self.live:
                        await self.deliver(job)
            except Exception:
                log.exception("redelivery sweep failed")


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
