"""Turning a request (a slash command, a button, a reaction) into a queued job.

Two steps, so that every refusal can be answered ephemerally before anything is written or shown:
:func:`prepare` validates and checks limits (no writes), then :func:`submit` records and queues.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import discord

from bot import models_dir
from bot.db.models import Job
from bot.jobs.manager import Ticket
from bot.jobs.policy import Defaults, Params, PolicyError
from engine.protocol import JobKind

if TYPE_CHECKING:
    from bot.client import ImagineBot

GUILD_ONLY = "I only make pictures in a server, where its limits and moderation apply; not in DMs."


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked, and where."""

    guild_id: int | None
    guild_name: str
    channel_id: int
    user_id: int
    user_name: str
    role_ids: tuple[int, ...] = ()
    nsfw_channel: bool = False

    @classmethod
    def of(cls, interaction: discord.Interaction) -> Origin:
        user = interaction.user
        roles = tuple(r.id for r in user.roles) if isinstance(user, discord.Member) else ()
        channel = interaction.channel
        nsfw = bool(getattr(channel, "nsfw", False)) if channel is not None else False
        return cls(
            guild_id=interaction.guild_id,
            guild_name=interaction.guild.name if interaction.guild else "",
            channel_id=interaction.channel_id or 0,
            user_id=user.id,
            user_name=str(user),
            role_ids=roles,
            nsfw_channel=nsfw,
        )


@dataclass(slots=True)
class Prepared:
    job: Job
    origin: Origin
    init_image: bytes | None = None


def defaults_of(bot: ImagineBot) -> Defaults:
    """The settings' defaults, before the model is known (its family may change the size: prepare)."""
    return models_dir.base_defaults(bot.settings)


async def model_and_defaults(
    bot: ImagineBot, guild_id: int | None, params: Params
) -> tuple[Params, Defaults]:
    """``params`` with the guild's default model filled in when none is named, and the defaults of a job
    on that model (its family's size and aspect buckets: bot/models_dir.py)."""
    model, guild_default = params.model, False
    if model is None and guild_id is not None:
        model = (await bot.admission.store.rules(guild_id, 0)).default_model
        params, guild_default = replace(params, model=model), model is not None
    entry = await asyncio.to_thread(models_dir.entry_for, bot.settings, model)
    # A named model was checked by /imagine; a follow-up's is the one its job ran on (the engine's name for
    # the default model, say), which the engine resolves. The guild's default may have left the folder.
    if guild_default and (entry is None or entry.family is None):
        raise PolicyError(
            f"This server's default model `{(model or '')[:60]}` is not available any more; "
            "an admin can pick another with `/default-model set` (`/models` lists them)."
        )
    return params, models_dir.job_defaults(bot.settings, entry)


async def prepare(
    bot: ImagineBot,
    origin: Origin,
    params: Params,
    *,
    kind: JobKind = JobKind.TXT2IMG,
    init_image: bytes | None = None,
    init_image_path: str | None = None,
    size: tuple[int, int] | None = None,
    parent: Job | None = None,
    parent_index: int | None = None,
) -> Prepared:
    """Validate ``params`` for ``origin``; raise PolicyError (a friendly message) on any refusal."""
    if origin.guild_id is None:
        # Bans, blocked terms and quotas are a server's: in a DM none would apply (README: Direct messages).
        raise PolicyError(GUILD_ONLY)
    params, defaults = await model_and_defaults(bot, origin.guild_id, params)
    # Limits, bans, blocked terms and quotas (bot/jobs/admission.py); raises PolicyError, writes nothing.
    admitted = await bot.admission.admit(origin, params, defaults, kind=kind, size=size)
    resolved, width, height = admitted.resolved, admitted.width, admitted.height
    job = Job(
        id=admitted.job_id,
        guild_id=origin.guild_id,
        channel_id=origin.channel_id,
        user_id=origin.user_id,
        kind=kind,
        prompt=resolved.prompt,
        negative_prompt=resolved.negative,
        seed=resolved.seed,
        steps=resolved.steps,
        cfg_scale=resolved.cfg,
        sampler=resolved.sampler,
        scheduler=resolved.scheduler,
        clip_skip=resolved.clip_skip,
        width=width,
        height=height,
        count=resolved.count,
        model=resolved.model,
        strength=resolved.strength if kind != JobKind.TXT2IMG else None,
        init_image_path=init_image_path,
        parent_job_id=parent.id if parent else None,
        parent_index=parent_index,
        priority=admitted.priority,
        safety_check=admitted.safety_check,
    )
    return Prepared(job, origin, init_image)


async def submit(
    bot: ImagineBot,
    prepared: Prepared,
    *,
    status_message_id: int | None = None,
    interaction_id: int | None = None,
) -> Ticket:
    job = prepared.job
    job.status_message_id = status_message_id
    job.interaction_id = interaction_id
    return await bot.jobs.submit(
        job,
        guild_name=prepared.origin.guild_name,
        user_name=prepared.origin.user_name,
        init_image=prepared.init_image,
    )
