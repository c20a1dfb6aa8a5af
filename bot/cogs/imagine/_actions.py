"""What each button under a job does, and the 🔄 reaction. One :class:`Action` per button, one handler
per action (:data:`HANDLERS`); handlers reach the bot's stores and courier through the client they are
given, so a click works the same before and after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.cogs.common import refuse_after_defer, reply, send
from bot.cogs.imagine import _texts as texts
from bot.cogs.imagine._replies import Deferred
from bot.cogs.imagine._submit import GUILD_ONLY, Origin, Prepared, prepare
from bot.db.models import Job, JobState
from bot.jobs.policy import Params, PolicyError
from bot.permissions import is_admin
from engine.pnginfo import read_png_parameters
from engine.protocol import JobKind

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

REROLL_EMOJI = "🔄"
VARIATION_STRENGTH = 0.6  # enough to change composition details, little enough to keep the picture
UPSCALE_STRENGTH = 0.35  # A1111's hires-fix range: add detail, keep the picture


class Action(StrEnum):
    """A button's action; the value is what its custom_id carries (``imb:<value>:<job>[:<index>]``)."""

    REROLL = "reroll"
    UPSCALE = "u"
    VARY = "v"
    DELETE = "del"
    INFO = "info"
    CANCEL = "cancel"


Handler = Callable[["ImagineBot", discord.Interaction, Job, "int | None", Deferred], Awaitable[None]]

# Answered only to the clicker; the others (🔄, U, V) start a job whose news is for the channel.
PRIVATE = frozenset({Action.INFO, Action.DELETE, Action.CANCEL})


async def on_button(
    bot: ImagineBot, interaction: discord.Interaction, action: Action, job_id: str, index: int | None
) -> None:
    # Acknowledge before the database read: Discord drops a click not answered within 3 s. Privately for
    # the private actions; publicly for a new job, whose refusal then withdraws it (refuse_after_defer).
    if action not in PRIVATE and interaction.guild_id is None:  # known without asking anyone: answer now
        await interaction.response.send_message(GUILD_ONLY, ephemeral=True)
        return
    if action in PRIVATE:
        deferred = await interaction.response.defer(ephemeral=True, thinking=True)
    else:
        deferred = await interaction.response.defer(thinking=True)
    job = await bot.store.get(job_id)
    if job is None:
        await _answer(interaction, action, "I can't find that job any more.")
        return
    await HANDLERS[action](bot, interaction, job, index, deferred)


async def _answer(interaction: discord.Interaction, action: Action, text: str) -> None:
    if action in PRIVATE:
        await reply(interaction, text)
    else:
        await refuse_after_defer(interaction, text)


def _params_of(job: Job) -> Params:
    """What ``job`` was asked with; a button's changes go over it with ``dataclasses.replace``."""
    return Params(
        prompt=job.prompt,
        negative=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        cfg=job.cfg_scale,
        sampler=job.sampler,
        count=job.count,
        model=job.model,
        strength=job.strength,
        scheduler=job.scheduler,
        clip_skip=job.clip_skip,
    )


def _may_manage(bot: ImagineBot, interaction: discord.Interaction, job: Job) -> bool:
    return interaction.user.id == job.user_id or is_admin(
        bot.settings, interaction.user, interaction.permissions
    )


async def _info(
    bot: ImagineBot, interaction: discord.Interaction, job: Job, index: int | None, deferred: Deferred
) -> None:
    texts_by_index = await asyncio.to_thread(
        lambda: [(i.index, read_png_parameters(Path(i.path).read_bytes())) for i in job.images]
    )
    if not texts_by_index:
        body = job.prompt[:1500]
    else:
        body = "\n\n".join(f"#{i + 1}\n{t}" for i, t in texts_by_index if t)
        if len(body) > 1900:
            body = body[:1890] + "…"
    await reply(interaction, f"```\n{body}\n```")


async def _delete(
    bot: ImagineBot, interaction: discord.Interaction, job: Job, index: int | None, deferred: Deferred
) -> None:
    if not _may_manage(bot, interaction, job):
        await reply(interaction, "Only the author or an admin can delete this.")
        return
    try:
        if interaction.message is not None:
            await interaction.message.delete()
        await reply(interaction, "Deleted.")
    except discord.HTTPException as exc:
        await reply(interaction, f"I couldn't delete it ({exc.text or exc.status}).")


async def _cancel(
    bot: ImagineBot, interaction: discord.Interaction, job: Job, index: int | None, deferred: Deferred
) -> None:
    if not _may_manage(bot, interaction, job):
        await reply(interaction, "Only the author or an admin can cancel this.")
        return
    if job.state.finished:
        await reply(interaction, f"That job is already {job.state.value}.")
        return
    await reply(interaction, "Cancelling…")
    await bot.jobs.cancel(job.id)


def _follow_up(action: Action) -> Handler:
    """🔄, U and V: a new job from an old one, on the clicker's quota."""

    async def handler(
        bot: ImagineBot, interaction: discord.Interaction, job: Job, index: int | None, deferred: Deferred
    ) -> None:
        try:
            prepared = await derive(bot, Origin.of(interaction), job, action, index)
        except PolicyError as exc:
            await refuse_after_defer(interaction, f"⚠️ {exc}")
            return
        await bot.courier.start(interaction, prepared, deferred=deferred)

    return handler


HANDLERS: dict[Action, Handler] = {
    Action.INFO: _info,
    Action.DELETE: _delete,
    Action.CANCEL: _cancel,
    Action.REROLL: _follow_up(Action.REROLL),
    Action.UPSCALE: _follow_up(Action.UPSCALE),
    Action.VARY: _follow_up(Action.VARY),
}


async def derive(bot: ImagineBot, origin: Origin, job: Job, action: Action, index: int | None) -> Prepared:
    """The job a 🔄, U or V asks for, checked against ``origin``'s limits (PolicyError if refused)."""
    if action is Action.REROLL:
        return await prepare(
            bot,
            origin,
            replace(_params_of(job), seed=None),
            kind=job.kind,
            init_image_path=job.init_image_path,
            size=(job.width, job.height),
            parent=job,
        )
    images = {i.index: i for i in job.images}
    image = images.get((index or 1) - 1)
    if image is None or not await asyncio.to_thread(Path(image.path).is_file):
        raise PolicyError("That picture is no longer on the server.")
    if action is Action.UPSCALE:
        return await prepare(
            bot,
            origin,
            replace(_params_of(job), seed=image.seed, count=1, strength=UPSCALE_STRENGTH),
            kind=JobKind.UPSCALE,
            init_image_path=image.path,
            size=(image.width * 2, image.height * 2),
            parent=job,
            parent_index=image.index,
        )
    return await prepare(
        bot,
        origin,
        replace(_params_of(job), seed=None, count=4, strength=VARIATION_STRENGTH),
        kind=JobKind.IMG2IMG,
        init_image_path=image.path,
        size=(image.width, image.height),
        parent=job,
        parent_index=image.index,
    )


async def reroll_from_reaction(bot: ImagineBot, payload: discord.RawReactionActionEvent) -> None:
    """Reacting 🔄 to a result reruns it with a new seed for whoever reacted, on their quota."""
    if str(payload.emoji) != REROLL_EMOJI or bot.user is None or payload.user_id == bot.user.id:
        return
    if payload.guild_id is None:
        return  # pictures are made in servers only (README: Direct messages)
    job = await bot.store.by_message(payload.message_id)
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
        nsfw_channel=bool(getattr(bot.get_channel(payload.channel_id), "nsfw", False)),
    )
    channel = bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
    reference = discord.MessageReference(
        message_id=payload.message_id, channel_id=payload.channel_id, fail_if_not_exists=False
    )
    mention = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(payload.user_id)])
    try:
        prepared = await derive(bot, origin, job, Action.REROLL, None)
    except PolicyError as exc:
        # No interaction, so no ephemeral answer; the reason (a ban's, a quota's) is the member's own
        # business, so it goes by DM, at most once per cooldown however often the reaction is toggled.
        await bot.courier.tell_privately(payload.user_id, f"⚠️ {exc}")
        return
    try:
        status = await send(
            channel,
            content=f"{texts.headline(prepared.job)}\n{REROLL_EMOJI} Rerolling…",
            reference=reference,
            allowed_mentions=mention,
        )
    except discord.HTTPException as exc:
        log.warning("cannot post a reroll status in %s: %s", payload.channel_id, exc)
        return
    await bot.courier.start_with_message(status, prepared)
