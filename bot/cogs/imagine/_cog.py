"""/imagine, /help, the result buttons, the 🔄 reaction, and the messages that follow a job from queued
to posted. This cog translates; the rules live in bot/jobs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import FriendlyErrors, lines_within
from bot.cogs.imagine._delivery import LiveReply, edit_progress, edit_status, find_posted, is_dead_token
from bot.cogs.imagine._submit import Origin, Prepared, prepare, submit
from bot.cogs.imagine._views import JobButton, cancel_view, result_view
from bot.db.models import Job, JobState
from bot.jobs.events import JobFinished, JobProgress, JobQueued, JobStarted, ManagerEvent
from bot.jobs.policy import ASPECTS, Params, PolicyError, aspect_size, parse_flags
from bot.models_dir import available_models
from bot.permissions import is_admin
from bot.render import fit, grid, placeholder
from engine import loras as lora_tags
from engine.pnginfo import read_png_parameters
from engine.sampler_names import SAMPLER_NAMES

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

REROLL = "🔄"
MAX_INPUT_BYTES = 10 * 1024 * 1024
VARIATION_STRENGTH = 0.6  # enough to change composition details, little enough to keep the picture
UPSCALE_STRENGTH = 0.35  # A1111's hires-fix range: add detail, keep the picture
REDELIVERY_INTERVAL = 60.0

HELP = f"""**/imagine** `prompt` — four pictures as a 2×2 grid.
Options: `negative` (what to leave out), `aspect` ({", ".join(ASPECTS)}), `seed`, `steps`, `cfg`,
`sampler`, `count` (1–4), `model`, `image` + `strength` (start from your picture).
Inline flags work too, Midjourney style — options win over flags:
> `/imagine a lighthouse at dusk --ar 16:9 --no fog, boats --seed 42`
> `/imagine portrait of a cat, oil painting --steps 30 --cfg 6.5 --sampler Euler a --count 2`
Under a result: **U1–U4** upscale that picture 2×, **V1–V4** make four variations of it, {REROLL} runs
the same prompt with a new seed (reacting {REROLL} does too), ℹ️ shows the parameters, 🗑️ deletes.
A1111 prompt syntax works: `(word:1.3)`, `[word]`, `BREAK`, and `<lora:name:0.8>` (**/loras** lists them).
Every picture keeps its A1111 `parameters` — drop it into AUTOMATIC1111's PNG Info tab.
**/usage** shows what you have made and what is left today; **/cancel** stops a job of yours.
Admins: **/limits**, **/ban**, **/blocklist**, **/queue**, **/stats**."""


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
    if job.kind == "img2img":
        parts.insert(0, f"variation (strength {job.strength:g})")
    elif job.kind == "upscale":
        parts.insert(0, "upscaled 2×")
    if job.engine_seconds is not None:
        parts.append(f"{job.engine_seconds:.1f} s")
    return " · ".join(parts)


def _params_of(job: Job, **changes: object) -> Params:
    values: dict[str, object] = dict(
        prompt=job.prompt,
        negative=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        cfg=job.cfg_scale,
        sampler=job.sampler,
        count=job.count,
        model=job.model,
        strength=job.strength,
    )
    values.update(changes)
    return Params(**values)  # type: ignore[arg-type]


class ImagineCog(FriendlyErrors):  # errors in commands become ephemeral explanations
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.live: dict[str, LiveReply] = {}
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        bot.jobs.subscribe(self.on_job_event)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)
        self._spawn(self._redelivery_loop())

    async def cog_unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: object) -> None:
        task = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------ commands

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
        model="Which model (from the server's model folder)",
        image="Start from this picture (img2img)",
        strength="With an image: how much to change it (0.1 a little - 1.0 completely)",
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
        model: app_commands.Range[str, 1, 200] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
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
                model=model,
                strength=strength,
            )
            params = options.merged_over(flags)
            self._check_model(params.model)
            self._check_loras(params.prompt)
            kind, init, size = "txt2img", None, None
            if image is not None:
                kind = "img2img"
                init, size = await self._read_init_image(image, params.aspect)
            prepared = await prepare(
                self.bot, Origin.of(interaction), params, kind=kind, init_image=init, size=size
            )
        except PolicyError as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        await self._start(interaction, prepared)

    @imagine.autocomplete("model")
    async def _model_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = available_models(
            self.bot.settings.models_dir, allow_pickle=self.bot.settings.allow_pickle_checkpoints
        )
        wanted = current.lower()
        return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names if wanted in n.lower()][:25]

    @app_commands.command(name="help", description="How to use the image bot")
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(HELP, ephemeral=True)

    @app_commands.command(name="loras", description="The LoRAs you can use in a prompt as <lora:name:0.8>")
    async def loras(self, interaction: discord.Interaction) -> None:
        s = self.bot.settings
        if s.engine_transport != "local":
            text = "LoRAs live on the GPU workers here; ask an admin which ones they have."
        else:
            folder = lora_tags.default_folder(s.lora_dir, s.models_dir)
            names = lora_tags.LoraLibrary(folder, allow_pickle=s.allow_pickle_checkpoints).names()
            if not names:
                text = "This server has no LoRAs set up (an admin can point `LORA_DIR` at a folder of them)."
            else:
                example = f"`/imagine a lighthouse at dusk <lora:{names[0]}:0.8>`"
                text = lines_within(
                    [f"Add one to a prompt like this: {example}", *(f"• `{n}`" for n in names)]
                )
        await interaction.response.send_message(text, ephemeral=True)

    def _check_model(self, name: str | None) -> None:
        if name is None:
            return
        names = available_models(
            self.bot.settings.models_dir, allow_pickle=self.bot.settings.allow_pickle_checkpoints
        )
        if name not in names:
            listed = ", ".join(names[:15]) if names else "none: this server has no model folder set up"
            raise PolicyError(f"There is no model called `{_clean(name, 60)}`. Available: {listed}.")

    def _check_loras(self, prompt: str | None) -> None:
        """Refuse a <lora:...> tag the engine would fail on, at once and privately. Only for local workers:
        they use this machine's LoRA folder; NATS workers have their own and answer for themselves."""
        s = self.bot.settings
        if not prompt or s.engine_transport != "local":
            return
        try:
            _, loras = lora_tags.extract(prompt)
            if loras:
                folder = lora_tags.default_folder(s.lora_dir, s.models_dir)
                lora_tags.LoraLibrary(folder, allow_pickle=s.allow_pickle_checkpoints).check(loras)
        except lora_tags.LoraError as exc:
            raise PolicyError(f"That prompt's LoRA can't be used: {_clean(str(exc), 400)}.") from None

    async def _read_init_image(
        self, image: discord.Attachment, aspect: str | None
    ) -> tuple[bytes, tuple[int, int]]:
        if not (image.content_type or "").startswith("image/"):
            raise PolicyError(f"`{_clean(image.filename, 60)}` is not a picture; attach a PNG, JPEG or WebP.")
        if image.size > MAX_INPUT_BYTES:
            raise PolicyError(f"That picture is {image.size / 2**20:.1f} MiB; the most is 10 MiB.")
        try:
            data = await image.read()
        except discord.HTTPException:
            raise PolicyError("I couldn't download your picture; please try again.") from None
        try:
            width, height = await asyncio.to_thread(_image_size, data)
        except Exception:
            raise PolicyError(f"I couldn't read `{_clean(image.filename, 60)}` as a picture.") from None
        if aspect is None:
            # Keep the shape of the picture the user gave, at the model's native pixel count.
            w, h = _reduce(width, height)
            aspect = f"{w}:{h}" if max(w, h) / min(w, h) <= 4 else "1:1"
        return data, aspect_size(aspect, self.bot.settings.default_size)

    async def _start(self, interaction: discord.Interaction, prepared: Prepared) -> None:
        """Acknowledge at once (Discord's 3 s), then record and queue the job."""
        callback = await interaction.response.defer(thinking=True)
        job = prepared.job
        # Registered before submitting: the job may start (and even finish) before submit returns.
        reply = self.live[job.id] = LiveReply(interaction=interaction, headline=self._headline(job))
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
                content=self._queued_text(ticket.job, ticket.position, ticket.eta_seconds),
                view=cancel_view(job.id),
            )

    # -------------------------------------------------------------------------------------- events

    async def on_job_event(self, event: ManagerEvent) -> None:
        # Never block the JobManager's event pump on Discord: each piece of news runs as its own task.
        self._spawn(self._handle(event))

    async def _handle(self, event: ManagerEvent) -> None:
        if isinstance(event, JobProgress):
            reply = self.live.get(event.job_id)
            if reply is not None:
                await self._progress(reply, event)
        elif isinstance(event, JobStarted):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(
                    reply,
                    content=f"{self._headline(event.job)}\n🎨 Starting…",
                    view=cancel_view(event.job.id),
                )
        elif isinstance(event, JobQueued):
            reply = self.live.get(event.job.id)
            if reply is not None:
                await edit_status(
                    reply, content=self._queued_text(event.job, event.position, event.eta_seconds)
                )
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

    def _headline(self, job: Job) -> str:
        return f"**{_clean(job.prompt)}** — <@{job.user_id}>"

    def _queued_text(self, job: Job, position: int, eta: float | None) -> str:
        wait = f", {_seconds(eta)}" if eta is not None else ""
        return f"{self._headline(job)}\n⏳ Queued — position {position}{wait}"

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
        if job.state is JobState.DONE:
            # Pictures the safety checker flagged are never posted; a dark tile keeps U1–U4 in place.
            pngs = await asyncio.to_thread(
                lambda: [
                    placeholder(i.width, i.height) if i.nsfw else Path(i.path).read_bytes()
                    for i in job.images
                ]
            )
            content = f"{self._headline(job)}\n{describe(job)}"
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
            content = f"{self._headline(job)}\n🚫 Cancelled."
        else:
            content = f"{self._headline(job)}\n❌ Sorry, that failed: {job.error or 'unknown error'}"
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
        files: object,
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
        limit = guild.filesize_limit if guild is not None else 10 * 1024 * 1024
        kwargs: dict[str, object] = {}
        if view is not None:
            kwargs["view"] = view
        try:
            return await channel.send(
                content=content,
                files=await files(limit),  # type: ignore[operator]
                allowed_mentions=mentions,
                reference=reference,
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

    # ------------------------------------------------------------------------------------- buttons

    async def on_button(
        self, interaction: discord.Interaction, action: str, job_id: str, index: int | None
    ) -> None:
        job = await self.bot.store.get(job_id)
        if job is None:
            await interaction.response.send_message("I can't find that job any more.", ephemeral=True)
            return
        if action == "info":
            await interaction.response.send_message(await self._info_text(job), ephemeral=True)
        elif action == "del":
            await self._delete(interaction, job)
        elif action == "cancel":
            await self._cancel(interaction, job)
        else:
            await self._follow_up(interaction, job, action, index)

    def _may_manage(self, interaction: discord.Interaction, job: Job) -> bool:
        return interaction.user.id == job.user_id or is_admin(
            self.bot.settings, interaction.user, interaction.permissions
        )

    async def _delete(self, interaction: discord.Interaction, job: Job) -> None:
        if not self._may_manage(interaction, job):
            await interaction.response.send_message(
                "Only the author or an admin can delete this.", ephemeral=True
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            if interaction.message is not None:
                await interaction.message.delete()
            await interaction.followup.send("Deleted.", ephemeral=True)
        except discord.HTTPException as exc:
            await interaction.followup.send(
                f"I couldn't delete it ({exc.text or exc.status}).", ephemeral=True
            )

    async def _cancel(self, interaction: discord.Interaction, job: Job) -> None:
        if not self._may_manage(interaction, job):
            await interaction.response.send_message(
                "Only the author or an admin can cancel this.", ephemeral=True
            )
            return
        if job.state.finished:
            await interaction.response.send_message(f"That job is already {job.state.value}.", ephemeral=True)
            return
        await interaction.response.send_message("Cancelling…", ephemeral=True)
        await self.bot.jobs.cancel(job.id)

    async def _info_text(self, job: Job) -> str:
        texts = await asyncio.to_thread(
            lambda: [(i.index, read_png_parameters(Path(i.path).read_bytes())) for i in job.images]
        )
        if not texts:
            return f"```\n{job.prompt[:1500]}\n```"
        body = "\n\n".join(f"#{i + 1}\n{t}" for i, t in texts if t)
        if len(body) > 1900:
            body = body[:1890] + "…"
        return f"```\n{body}\n```"

    async def _follow_up(
        self, interaction: discord.Interaction, job: Job, action: str, index: int | None
    ) -> None:
        """🔄, U and V: a new job from an old one, on the clicker's quota."""
        try:
            prepared = await self._derive(Origin.of(interaction), job, action, index)
        except PolicyError as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        await self._start(interaction, prepared)

    async def _derive(self, origin: Origin, job: Job, action: str, index: int | None) -> Prepared:
        if action == "reroll":
            return await prepare(
                self.bot,
                origin,
                _params_of(job, seed=None),
                kind=job.kind,
                init_image_path=job.init_image_path,
                size=(job.width, job.height),
                parent=job,
            )
        images = {i.index: i for i in job.images}
        image = images.get((index or 1) - 1)
        if image is None or not await asyncio.to_thread(Path(image.path).is_file):
            raise PolicyError("That picture is no longer on the server.")
        if action == "u":
            return await prepare(
                self.bot,
                origin,
                _params_of(job, seed=image.seed, count=1, strength=UPSCALE_STRENGTH),
                kind="upscale",
                init_image_path=image.path,
                size=(image.width * 2, image.height * 2),
                parent=job,
                parent_index=image.index,
            )
        return await prepare(
            self.bot,
            origin,
            _params_of(job, seed=None, count=4, strength=VARIATION_STRENGTH),
            kind="img2img",
            init_image_path=image.path,
            size=(image.width, image.height),
            parent=job,
            parent_index=image.index,
        )

    # ------------------------------------------------------------------------------------ reaction

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) != REROLL or self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        job = await self.bot.store.by_message(payload.message_id)
        if job is None or job.state is not JobState.DONE:
            return
        member = payload.member
        origin = Origin(
            guild_id=payload.guild_id,
            guild_name=member.guild.name if member is not None else "",
            channel_id=payload.channel_id,
            user_id=payload.user_id,
            user_name=str(member) if member is not None else str(payload.user_id),
            role_ids=tuple(r.id for r in member.roles) if member is not None else (),
            nsfw_channel=bool(getattr(self.bot.get_channel(payload.channel_id), "nsfw", False)),
        )
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        reference = discord.MessageReference(
            message_id=payload.message_id, channel_id=payload.channel_id, fail_if_not_exists=False
        )
        mention = discord.AllowedMentions(
            everyone=False, roles=False, users=[discord.Object(payload.user_id)]
        )
        try:
            prepared = await self._derive(origin, job, "reroll", None)
        except PolicyError as exc:
            # No interaction, so no ephemeral answer: a short reply that cleans itself up.
            with contextlib.suppress(discord.HTTPException):
                await channel.send(
                    f"<@{payload.user_id}> ⚠️ {exc}",
                    reference=reference,
                    allowed_mentions=mention,
                    delete_after=20,
                )
            return
        try:
            status = await channel.send(
                f"{self._headline(prepared.job)}\n{REROLL} Rerolling…",
                reference=reference,
                allowed_mentions=mention,
            )
        except discord.HTTPException as exc:
            log.warning("cannot post a reroll status in %s: %s", payload.channel_id, exc)
            return
        reply = self.live[prepared.job.id] = LiveReply(message=status, headline=self._headline(prepared.job))
        ticket = await submit(self.bot, prepared, status_message_id=status.id)
        if ticket.job.state is JobState.QUEUED:
            await edit_status(
                reply,
                content=self._queued_text(ticket.job, ticket.position, ticket.eta_seconds),
                view=cancel_view(prepared.job.id),
            )


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _reduce(width: int, height: int) -> tuple[int, int]:
    from math import gcd

    g = gcd(width, height) or 1
    w, h = width // g, height // g
    # Odd photo sizes give ratios like 1021:767; aspect_size only needs the proportion, so cap the terms.
    while max(w, h) > 999:
        w, h = max(1, round(w / 2)), max(1, round(h / 2))
    return w, h
