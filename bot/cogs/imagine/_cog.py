"""The /imagine command and the messages that follow a job from queued to posted."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.imagine._delivery import LiveReply, edit_progress, edit_status, is_dead_token
from bot.db.models import Job, JobState
from bot.jobs.events import JobFinished, JobProgress, JobQueued, JobStarted, ManagerEvent
from bot.jobs.manager import new_job_id
from bot.jobs.policy import ASPECTS, Defaults, Limits, Params, PolicyError, parse_flags, resolve
from bot.render import grid
from engine.sampler_names import SAMPLER_NAMES

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)


def _clean(text: str, limit: int = 300) -> str:
    """A user's prompt shown back safely: no pings, no markdown surprises, bounded length."""
    text = discord.utils.escape_mentions(discord.utils.escape_markdown(text.replace("\n", " ")))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"about {value:.0f} s" if value >= 1.5 else "about a second"


def describe(job: Job) -> str:
    """The parameter line under a result: seed(s), sampler, steps, cfg, size, time."""
    seeds = f"seed {job.seed}" if job.count == 1 else f"seeds {job.seed}–{job.seed + job.count - 1}"
    parts = [seeds, job.sampler, f"{job.steps} steps", f"CFG {job.cfg_scale:g}", f"{job.width}×{job.height}"]
    if job.engine_seconds is not None:
        parts.append(f"{job.engine_seconds:.1f} s")
    return " · ".join(parts)


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.live: dict[str, LiveReply] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        bot.jobs.subscribe(self.on_job_event)

    # ------------------------------------------------------------------------------------- command

    def defaults(self) -> Defaults:
        s = self.bot.settings
        return Defaults(
            steps=s.default_steps, cfg=s.default_cfg, sampler=s.default_sampler, size=s.default_size
        )

    @app_commands.command(name="imagine", description="Make pictures from a text prompt")
    @app_commands.describe(
        prompt="What to draw. Inline flags work too: --ar 16:9 --seed 42 --no text --steps 30",
        negative="What to keep out of the picture",
        aspect="Shape of the picture",
        seed="Same seed + same settings = same picture",
        steps="More steps: more detail, slower",
        cfg="How closely to follow the prompt (1-30, usually 5-9)",
        sampler="A1111 sampler name",
        count="How many pictures (1-4)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLER_NAMES[:25]],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        negative: app_commands.Range[str, 0, 1500] | None = None,
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 1.0, 30.0] | None = None,
        sampler: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
    ) -> None:
        try:
            flags = parse_flags(prompt)
            options = Params(
                prompt=flags.prompt,
                negative=negative,
                aspect=aspect,
                seed=seed,
                steps=steps,
                cfg=cfg,
                sampler=sampler,
                count=count,
            )
            resolved = resolve(options.merged_over(flags), self.defaults(), Limits())
        except PolicyError as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        callback = await interaction.response.defer(thinking=True)
        job = Job(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            kind="txt2img",
            prompt=resolved.prompt,
            negative_prompt=resolved.negative,
            seed=resolved.seed,
            steps=resolved.steps,
            cfg_scale=resolved.cfg,
            sampler=resolved.sampler,
            width=resolved.width,
            height=resolved.height,
            count=resolved.count,
            model=resolved.model,
            interaction_id=interaction.id,
            status_message_id=callback.message_id if callback else None,
        )
        job.id = new_job_id()
        # Registered before submitting: the job may start (and even finish) before submit returns.
        reply = self.live[job.id] = LiveReply(interaction)
        ticket = await self.bot.jobs.submit(
            job,
            guild_name=interaction.guild.name if interaction.guild else "",
            user_name=str(interaction.user),
        )
        if ticket.job.state is JobState.QUEUED:
            await edit_status(
                reply, content=self._queued_text(ticket.job, ticket.position, ticket.eta_seconds)
            )

    # -------------------------------------------------------------------------------------- events

    async def on_job_event(self, event: ManagerEvent) -> None:
        # Never block the JobManager's event pump on Discord: each piece of news runs as its own task.
        task = asyncio.create_task(self._handle(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, event: ManagerEvent) -> None:
        if isinstance(event, JobProgress):
            reply = self.live.get(event.job_id)
            if reply is not None:
                await self._progress(reply, event)
        elif isinstance(event, JobStarted):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(reply, content=f"{self._headline(event.job)}\n🎨 Starting…")
        elif isinstance(event, JobQueued):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(
                    reply, content=self._queued_text(event.job, event.position, event.eta_seconds)
                )
        elif isinstance(event, JobFinished):
            await self.deliver(event.job)

    async def _progress(self, reply: LiveReply, event: JobProgress) -> None:
        job = await self.bot.store.get(event.job_id)
        if job is None:
            return
        content = f"{self._headline(job)}\n🎨 Step {event.step}/{event.total}"
        if event.preview:
            await edit_progress(
                reply, content=content, attachments=[discord.File(io.BytesIO(event.preview), "preview.webp")]
            )
        else:
            await edit_progress(reply, content=content)

    def _headline(self, job: Job) -> str:
        return f"**{_clean(job.prompt)}** — <@{job.user_id}>"

    def _queued_text(self, job: Job, position: int, eta: float | None) -> str:
        wait = f", {_seconds(eta)}" if eta is not None else ""
        return f"{self._headline(job)}\n⏳ Queued — position {position}{wait}"

    # ------------------------------------------------------------------------------------ delivery

    async def deliver(self, job: Job) -> None:
        """Post a finished job's outcome once; record where it went so a restart does not repeat it."""
        reply = self.live.pop(job.id, None)
        files: list[discord.File] = []
        if job.state is JobState.DONE:
            pngs = await asyncio.to_thread(lambda: [Path(i.path).read_bytes() for i in job.images])
            picture = await asyncio.to_thread(grid, pngs)
            files.append(discord.File(io.BytesIO(picture), f"{job.id}.png"))
            content = f"{self._headline(job)}\n{describe(job)}"
        elif job.state is JobState.CANCELLED:
            content = f"{self._headline(job)}\n🚫 Cancelled."
        else:
            content = f"{self._headline(job)}\n❌ Sorry, that failed: {job.error or 'unknown error'}"
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        message_id: int | None = None
        if reply is not None and reply.token_alive():
            async with reply.lock:
                reply.finished = True
                try:
                    message = await reply.interaction.edit_original_response(
                        content=content, attachments=files, allowed_mentions=mentions
                    )
                    message_id = message.id
                except discord.HTTPException as exc:
                    if not is_dead_token(exc):
                        log.warning(
                            "editing the reply for job %s failed (%s); posting in the channel", job.id, exc
                        )
                    for f in files:
                        f.reset()
        if message_id is None:
            message_id = await self._post_in_channel(job, content, files, mentions)
        if message_id is not None:
            await self.bot.jobs.mark_delivered(job.id, message_id)

    async def _post_in_channel(
        self, job: Job, content: str, files: list[discord.File], mentions: discord.AllowedMentions
    ) -> int | None:
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reference = None
        if job.status_message_id:
            reference = discord.MessageReference(
                message_id=job.status_message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
        try:
            message = await channel.send(
                content=content, files=files, allowed_mentions=mentions, reference=reference
            )  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            # Left undelivered in the database: the next start posts it again.
            log.error("could not post job %s in channel %s: %s", job.id, job.channel_id, exc)
            return None
        return message.id

    async def cog_unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()
