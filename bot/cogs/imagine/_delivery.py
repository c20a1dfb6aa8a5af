"""Getting job news onto Discord without ever losing a result.

The :class:`Courier` owns the live replies (the message each running job is shown in), turns the
JobManager's events into edits of them, and posts each finished job exactly once. While the interaction
token is young the bot edits its own reply; after that (tokens die at 15 minutes, and after a restart
there is no token at all) it posts a channel message replying to the author, and turns the stale status
message into a pointer to it. A job is marked delivered only once Discord accepted the message; undelivered
ones are tried again on start and by a sweep every minute, each job on its own, backing off, and given up
(its author told by DM) once Discord refused for good or the tries ran out (_redelivery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.cogs.common import NO_MENTIONS, edit, public_error, safe, send
from bot.cogs.imagine import _redelivery as redelivery
from bot.cogs.imagine import _texts as texts
from bot.cogs.imagine._actions import REROLL_EMOJI as REROLL
from bot.cogs.imagine._replies import (
    DEFAULT_UPLOAD_LIMIT,
    Deferred,
    LiveReply,
    edit_progress,
    edit_status,
    is_dead_token,
)
from bot.cogs.imagine._submit import Prepared, submit
from bot.cogs.imagine._views import cancel_view, result_view
from bot.db.models import Job, JobState, utcnow
from bot.jobs.events import JobDispatched, JobFinished, JobProgress, JobQueued, ManagerEvent
from bot.render import UNREADABLE, fit, grid, placeholder

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

NOTICE_COOLDOWN = 600.0  # seconds between two private notices to one member

Files = Callable[[int], Awaitable[list[discord.File]]]


class Courier:
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.live: dict[str, LiveReply] = {}
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._noticed: dict[int, float] = {}  # member id -> when tell_privately last wrote to them
        bot.jobs.subscribe(self.on_job_event)

    async def tell_privately(self, user_id: int, text: str, *, cooldown: bool = True) -> None:
        """A DM for news that has no interaction to answer ephemerally. With ``cooldown`` (a refused 🔄
        reaction) at most one per member per NOTICE_COOLDOWN, so toggling a reaction cannot make the bot
        write on and on; without (a result given up on) every one, as each is about a different job."""
        now = time.monotonic()
        if cooldown and now - self._noticed.get(user_id, -NOTICE_COOLDOWN) < NOTICE_COOLDOWN:
            return
        if len(self._noticed) > 10_000:  # bounded: forget cooldowns that are over
            self._noticed = {u: t for u, t in self._noticed.items() if now - t < NOTICE_COOLDOWN}
        self._noticed[user_id] = now
        try:
            dm = await self.bot.create_dm(discord.Object(user_id))
            await send(dm, content=text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:  # DMs closed: nothing public instead
            log.info("could not DM %s: %s", user_id, exc)

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
        deferred: Deferred = None,
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
                await edit(interaction, content="❌ Sorry, I couldn't queue that; please try again.")
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
            await self.deliver(event.job, picture=event.picture)

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

    async def deliver(
        self, job: Job, *, picture: bytes | None = None, now: dt.datetime | None = None
    ) -> None:
        """Post a finished job's outcome once; record where it went so a restart does not repeat it.
        ``picture``: what to show, when the engine's result brought it (JobFinished); else it is made from
        the saved files. A failure is counted and backed off, and past its tries the job is given up and
        its author told (:meth:`_failed`); it never reaches the caller, so one job cannot stop the others."""
        if job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            try:
                await self._deliver(job, picture)
            except Exception as exc:
                await self._failed(job, exc, now or utcnow())
        finally:
            self._delivering.discard(job.id)

    async def _deliver(self, job: Job, picture: bytes | None) -> None:
        reply = self.live.pop(job.id, None)
        view: discord.ui.View | None = None
        headline = texts.headline(job)
        if job.state is not JobState.DONE:
            picture = None
        if picture is not None:
            content = f"{headline}\n{texts.describe(job)}{texts.withheld_note(job)}"
            view = result_view(job)
        elif job.state is JobState.DONE:
            content = f"{headline}\n{texts.describe(job)}"
            try:
                # Pictures the safety checker flagged are never posted; a dark tile keeps U1–U4 in place.
                pngs = await asyncio.to_thread(
                    lambda: [
                        placeholder(i.width, i.height) if i.nsfw else Path(i.path).read_bytes()
                        for i in job.images
                    ]
                )
            except OSError as exc:  # pruned from OUTPUT_DIR before it was ever posted
                log.warning("the pictures of job %s are gone: %s", job.id, exc)
                pngs = []
                content += "\n❌ Sorry, this result's pictures are no longer on the server."
            content += texts.withheld_note(job)
            if pngs and not all(i.nsfw for i in job.images):
                try:
                    picture = await asyncio.to_thread(grid, pngs, [i.seed for i in job.images])
                    view = result_view(job)
                except UNREADABLE as exc:
                    # A file damaged on the server stays damaged: trying again for hours would not help.
                    log.error("the pictures of job %s cannot be read: %s", job.id, exc)
                    content += "\n❌ Sorry, this result's pictures could not be read on the server."
        elif job.state is JobState.CANCELLED:
            content = f"{headline}\n🚫 Cancelled."
        else:
            content = f"{headline}\n❌ Sorry, that failed: {public_error(job.error)}"
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
            message = await self._post_in_channel(job, content, files, view, mentions)  # raises if refused
        await self.bot.jobs.mark_delivered(job.id, message.id)
        if job.status_message_id and message.id != job.status_message_id:
            await self._point_status_at(job, message)
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
    ) -> discord.Message:
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        limit = guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
        fields: dict[str, Any] = {"content": content, "allowed_mentions": mentions}
        if view is not None:
            fields["view"] = view
        if job.status_message_id:
            fields["reference"] = discord.MessageReference(
                message_id=job.status_message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
        try:
            return await send(channel, files=await files(limit), **fields)
        except discord.Forbidden:
            if "reference" not in fields:
                raise
            # A reply needs Read Message History; the mention alone still tells the author.
            del fields["reference"]
            return await send(channel, files=await files(limit), **fields)

    async def _point_status_at(self, job: Job, result: discord.Message) -> None:
        """The job's status message (left at "Step 10/20" with a preview by a restart or a dead token)
        becomes a pointer to the result, so the channel does not show two pictures for one job. Through
        the channel route: the bot may edit its own messages there, interaction replies included."""
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        assert job.status_message_id is not None
        try:
            await edit(
                channel.get_partial_message(job.status_message_id),
                content=f"{texts.headline(job)}\n⬇️ Finished: {result.jump_url}",
                attachments=[],
                view=None,
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:  # deleted, or no longer visible to the bot: nothing to fix
            log.info("could not point the status of job %s at its result: %s", job.id, exc)

    async def _failed(self, job: Job, exc: Exception, now: dt.datetime) -> None:
        """Count a failed delivery; back off, or give up and tell the author where it can."""
        store = self.bot.store
        retry_at = now + redelivery.backoff((job.delivery_attempts or 0) + 1)
        attempts = await store.delivery_failed(job.id, retry_at)
        allowed = redelivery.tries_allowed(exc)
        if isinstance(exc, discord.HTTPException):
            log.warning("delivering job %s failed (try %d of %d): %s", job.id, attempts, allowed, exc)
        else:
            log.error("delivering job %s failed (try %d of %d)", job.id, attempts, allowed, exc_info=exc)
        if attempts < allowed:
            return
        why = redelivery.reason(exc)
        await store.mark_undeliverable(job.id, why)
        log.warning("job %s is undeliverable (%s); its author is told by DM", job.id, why)
        note = (
            f"I couldn't post the result of **{safe(job.prompt, 100)}** in <#{job.channel_id}>: {why}. "
            f"A server admin can fix that; then ask again. (Job `{job.id}`.)"
        )
        await self.tell_privately(job.user_id, note, cooldown=False)

    async def sweep_once(self, now: dt.datetime | None = None) -> None:
        """One redelivery pass: every undelivered job whose back-off is over, each on its own."""
        now = now or utcnow()
        for job in await self.bot.store.undelivered(due_by=now):
            if job.id in self._delivering or job.id in self.live:
                continue
            try:
                await self.deliver(job, now=now)
            except Exception:  # recording the failure failed (the database): the next pass tries again
                log.exception("redelivery of job %s failed", job.id)

    async def _redelivery_loop(self) -> None:
        """Results Discord refused (an outage, a missing permission) are tried again, not forgotten."""
        while True:
            await asyncio.sleep(redelivery.SWEEP_INTERVAL)
            try:
                await self.sweep_once()
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
