"""/imagine, /help, /loras and the 🔄 reaction's listener. This cog translates; the rules live in bot/jobs,
the buttons' handlers in _actions.py, and the messages that follow a job in _delivery.py."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import models_dir
from bot.cogs.common import FriendlyErrors, lines_within, refuse_after_defer, reply, safe, within_budget
from bot.cogs.imagine._actions import REROLL_EMOJI, reroll_from_reaction
from bot.cogs.imagine._submit import Origin, defaults_of, model_and_defaults, prepare
from bot.cogs.imagine._views import JobButton
from bot.jobs.policy import (
    ASPECTS,
    Defaults,
    Limits,
    Params,
    PolicyError,
    aspect_size,
    parse_flags,
    resolve,
)
from engine import bounds, pictures
from engine import embeddings as ti
from engine import loras as lora_tags
from engine.model_files import list_embeddings, list_models
from engine.protocol import JobKind
from engine.sampler_names import SAMPLER_NAMES, SCHEDULE_NAMES

log = logging.getLogger(__name__)

REROLL = REROLL_EMOJI

HELP = f"""**/imagine** `prompt` — four pictures as a 2×2 grid.
Options: `negative` (what to leave out), `aspect` ({", ".join(ASPECTS)}), `seed`, `steps`, `cfg`,
`sampler`, `scheduler` (schedule type), `clip_skip`, `count`, `model` (**/models** lists them),
`image` + `strength` (start from your picture).
Inline flags work too, Midjourney style — options win over flags:
> `/imagine a lighthouse at dusk --ar 16:9 --no fog, boats --seed 42`
> `/imagine portrait of a cat, oil painting --steps 30 --cfg 6.5 --sampler Euler a --count 2`
Under a result: **U1–U4** upscale that picture 2×, **V1–V4** make four variations of it, {REROLL} runs
the same prompt with a new seed (reacting {REROLL} does too), ℹ️ shows the parameters, 🗑️ deletes.
A1111 prompt syntax works: `(word:1.3)`, `[word]`, `BREAK`, and `<lora:name:0.8>` (**/loras** lists them);
an embedding's name as a word of the prompt or `negative` applies it (**/embeddings** lists them).
Every picture keeps its A1111 `parameters` — drop it into AUTOMATIC1111's PNG Info tab.
**/usage** shows what you have made and what is left today; **/cancel** stops a job of yours.
Admins: **/limits**, **/ban**, **/blocklist**, **/queue**, **/stats**, **/default-model**."""


class ImagineCog(FriendlyErrors):  # errors in commands become ephemeral explanations
    defer_first = False  # /imagine answers table refusals at once and defers publicly itself

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)
        self.bot.courier.start_sweeping()

    async def cog_unload(self) -> None:
        self.bot.courier.close()

    # ------------------------------------------------------------------------------------ commands

    @app_commands.guild_only()  # README: Direct messages
    @app_commands.command(name="imagine", description="Make pictures from a text prompt")
    @app_commands.describe(
        prompt="What to draw. Inline flags work too: --ar 16:9 --seed 42 --no text --steps 30",
        negative="What to keep out of the picture",
        aspect="Shape of the picture",
        seed="Same seed + same settings = same picture",
        steps="More steps: more detail, slower",
        cfg=f"How closely to follow the prompt ({bounds.CFG.lo:g}-{bounds.CFG.hi:g}, usually 5-9)",
        sampler="A1111 sampler name",
        scheduler="A1111 schedule type (Automatic: the sampler's own, e.g. Karras for DPM++ 2M)",
        clip_skip="Stop the text encoder this many layers early (2 for many anime models; 0: model default)",
        count="How many pictures (4 unless the server allows more)",
        model="Which model (from the server's model folder)",
        image=f"Start from this picture (img2img): {pictures.FORMAT_NAMES}",
        strength="With an image: how much to change it (0.1 a little - 1.0 completely)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLER_NAMES[:25]],
        scheduler=[app_commands.Choice(name=s, value=s) for s in SCHEDULE_NAMES[:25]],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        # The options' ranges are engine/bounds.py's table, which the inline flags and the engine read too.
        prompt: app_commands.Range[str, 1, bounds.PROMPT_CHARS],
        negative: app_commands.Range[str, 0, bounds.PROMPT_CHARS] | None = None,
        aspect: str | None = None,
        seed: app_commands.Range[int, bounds.SEED.lo, bounds.SEED.hi] | None = None,
        steps: app_commands.Range[int, bounds.STEPS.lo, bounds.STEPS.hi] | None = None,
        cfg: app_commands.Range[float, bounds.CFG.lo, bounds.CFG.hi] | None = None,
        sampler: str | None = None,
        count: app_commands.Range[int, bounds.COUNT.lo, bounds.COUNT.hi] | None = None,
        model: app_commands.Range[str, 1, bounds.MODEL_NAME_CHARS] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, bounds.STRENGTH.lo, bounds.STRENGTH.hi] | None = None,
        scheduler: str | None = None,
        clip_skip: app_commands.Range[int, bounds.CLIP_SKIP.lo, bounds.CLIP_SKIP.hi] | None = None,
    ) -> None:
        # Only pure, instant checks before the acknowledgement: a refusal here is the response itself.
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
                scheduler=scheduler,
                clip_skip=clip_skip,
            )
            params = options.merged_over(flags)
            resolve(params, defaults_of(self.bot), Limits.table())  # the table's bounds: pure and instant
        except PolicyError as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        # Acknowledge before any network, file or database work: Discord drops an interaction not answered
        # within 3 s, and the picture's download alone can take longer. Publicly, because the job's news
        # and results are for the channel; a refusal from here on withdraws it (see refuse_after_defer).
        deferred = await interaction.response.defer(thinking=True)
        try:
            # Each check that reads the disk runs in a thread; one with nothing to check (no model named,
            # no <lora:...> tag: most requests) runs none, as a thread hop costs more than the check.
            if params.model is not None:
                await asyncio.to_thread(self._check_model, params.model)  # walks the model folder
            model = params.model
            if model is None and interaction.guild_id is not None:
                model = (await self.bot.admission.store.rules(interaction.guild_id, 0)).default_model
            if self._names_loras(params.prompt):
                await asyncio.to_thread(self._check_loras, params.prompt, model)  # walks the LoRA folder
            kind, init, size = JobKind.TXT2IMG, None, None
            if image is not None:
                kind = JobKind.IMG2IMG
                _, defaults = await model_and_defaults(self.bot, interaction.guild_id, params)
                init, size = await self._read_init_image(image, params.aspect, defaults)
            prepared = await prepare(
                self.bot, Origin.of(interaction), params, kind=kind, init_image=init, size=size
            )
        except PolicyError as exc:
            await refuse_after_defer(interaction, f"⚠️ {exc}")
            return
        except Exception:  # answered here, not by cog_app_command_error: that would follow up a second time
            log.exception("/imagine failed before queueing in guild %s", interaction.guild_id)
            await refuse_after_defer(
                interaction, "❌ Sorry, something went wrong on my side; please try again."
            )
            return
        await self.bot.courier.start(interaction, prepared, deferred=deferred)

    @imagine.autocomplete("model")
    async def _model_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        found = await within_budget(asyncio.to_thread(models_dir.choices, self.bot.settings, current))
        return [app_commands.Choice(name=label, value=value) for label, value in found]  # "name (SDXL)"

    @app_commands.command(name="help", description="How to use the image bot")
    async def help(self, interaction: discord.Interaction) -> None:
        await reply(interaction, HELP)

    @app_commands.command(name="loras", description="The LoRAs you can use in a prompt as <lora:name:0.8>")
    async def loras(self, interaction: discord.Interaction) -> None:
        s = self.bot.settings
        if s.engine_transport != "local":
            text = "LoRAs live on the GPU workers here; ask an admin which ones they have."
        else:
            await interaction.response.defer(ephemeral=True, thinking=True)  # before walking the folder
            folder = lora_tags.default_folder(s.lora_dir, s.models_dir)
            library = lora_tags.LoraLibrary(folder, allow_pickle=s.allow_pickle_checkpoints)
            names = await asyncio.to_thread(library.names)
            if not names:
                text = "This server has no LoRAs set up (an admin can point `LORA_DIR` at a folder of them)."
            else:
                example = f"`/imagine a lighthouse at dusk <lora:{names[0]}:0.8>`"
                text = lines_within(
                    [f"Add one to a prompt like this: {example}", *(f"• `{n}`" for n in names)]
                )
        await reply(interaction, text)

    @app_commands.command(
        name="embeddings", description="The textual-inversion embeddings you can name in a prompt"
    )
    async def embeddings(self, interaction: discord.Interaction) -> None:
        s = self.bot.settings
        if s.engine_transport != "local":
            text = "Embeddings live on the GPU workers here; ask an admin which ones they have."
        else:
            await interaction.response.defer(ephemeral=True, thinking=True)  # before walking the folder
            folder = ti.default_folder(s.embeddings_dir, s.models_dir)
            names = await asyncio.to_thread(list_embeddings, folder)
            if not names:
                text = (
                    "This server has no embeddings set up "
                    "(an admin can point `EMBEDDINGS_DIR` at a folder of them)."
                )
            else:
                example = f"`/imagine a lighthouse at dusk --no {names[0]}`"
                text = lines_within(
                    [
                        f"Write a name as a word of the prompt or negative: {example}",
                        *(f"• `{n}`" for n in names),
                    ]
                )
        await reply(interaction, text)

    def _check_model(self, name: str | None) -> None:
        if name is None:
            return
        names = list_models(self.bot.settings.models_dir)
        if name not in names:
            listed = ", ".join(names[:15]) if names else "none: this server has no model folder set up"
            raise PolicyError(f"There is no model called `{safe(name, 60)}`. Available: {listed}.")

    def _names_loras(self, prompt: str | None) -> bool:
        """Whether :meth:`_check_loras` has anything to check (no disk: the tags are in the text)."""
        if not prompt or self.bot.settings.engine_transport != "local":
            return False
        try:
            return bool(lora_tags.extract(prompt)[1])
        except lora_tags.LoraError:
            return True  # a malformed tag: the check says what is wrong with it

    def _check_loras(self, prompt: str | None, model: str | None) -> None:
        """Refuse a <lora:...> tag the engine would fail on, at once and privately: an unknown one, or one
        made for another family than ``model``'s (None: MODEL), as far as the files' headers tell. Only for
        local workers: they use this machine's LoRA folder; NATS workers have their own and answer for
        themselves."""
        s = self.bot.settings
        if not prompt or s.engine_transport != "local":
            return
        try:
            _, loras = lora_tags.extract(prompt)
            if loras:
                folder = lora_tags.default_folder(s.lora_dir, s.models_dir)
                entry = models_dir.entry_for(s, model)
                family = entry.family if entry is not None else None
                lora_tags.LoraLibrary(folder, allow_pickle=s.allow_pickle_checkpoints).check(loras, family)
        except lora_tags.LoraError as exc:
            raise PolicyError(f"That prompt's LoRA can't be used: {safe(str(exc), 400)}.") from None

    async def _read_init_image(
        self, image: discord.Attachment, aspect: str | None, defaults: Defaults
    ) -> tuple[bytes, tuple[int, int]]:
        """The attachment as the normalized PNG the engine gets (engine/pictures.py), and the job's size."""
        name = safe(image.filename, 60)
        # What Discord says about the file decides nothing (the member chose it), but it can refuse early.
        if image.content_type and not image.content_type.startswith("image/"):
            raise PolicyError(f"`{name}` is not a picture; attach a {pictures.FORMAT_NAMES}.")
        if image.size > bounds.UPLOAD_BYTES:
            raise PolicyError(
                f"`{name}` is {image.size / 2**20:.1f} MiB; the most is {bounds.UPLOAD_BYTES // 2**20} MiB."
            )
        try:
            data = await image.read()
        except discord.HTTPException:
            raise PolicyError("I couldn't download your picture; please try again.") from None
        try:
            picture = await asyncio.to_thread(pictures.normalize, data)
        except pictures.PictureError as exc:
            raise PolicyError(f"`{name}`: {exc}") from None
        width, height = picture.width, picture.height
        if aspect is None:
            # Keep the shape of the picture the user gave, at the model's native pixel count.
            w, h = _reduce(width, height)
            aspect = f"{w}:{h}" if max(w, h) / min(w, h) <= 4 else "1:1"
        return picture.png, aspect_size(aspect, defaults.size, defaults.buckets)  # the model family's sizes

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await reroll_from_reaction(self.bot, payload)


def _reduce(width: int, height: int) -> tuple[int, int]:
    from math import gcd

    g = gcd(width, height) or 1
    w, h = width // g, height // g
    # Odd photo sizes give ratios like 1021:767; aspect_size only needs the proportion, so cap the terms.
    while max(w, h) > 999:
        w, h = max(1, round(w / 2)), max(1, round(h / 2))
    return w, h
