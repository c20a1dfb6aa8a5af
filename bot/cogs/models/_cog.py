"""/models and /default-model set|clear."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

from bot import models_dir
from bot.cogs.common import (
    ADMIN_PERMISSIONS,
    FriendlyErrors,
    admin_only,
    caller_is_admin,
    code,
    lines_within,
    reply,
    within_budget,
)
from bot.jobs.policy import PolicyError
from engine import bounds
from engine.model_catalog import ModelEntry

NO_FOLDER = "This server has no model folder set up (an admin points `MODELS_DIR` at one)."


def model_line(entry: ModelEntry, default: str | None) -> str:
    if entry.family is None:
        return f"• {code(entry.name)}: not usable ({entry.problem[:120]})"
    mark = " ← this server's default" if entry.name == default else ""
    side = entry.native_size
    return f"• {code(entry.name)}: {entry.family.label}, {side}×{side}{mark}"


class ModelsCog(FriendlyErrors):
    @app_commands.command(name="models", description="The models you can pick with /imagine model:")
    @app_commands.guild_only()
    async def models(self, interaction: discord.Interaction) -> None:
        found = await asyncio.to_thread(models_dir.entries, self.bot.settings)
        if not found:
            await reply(interaction, NO_FOLDER)
            return
        assert interaction.guild_id is not None
        default = (await self.store.rules(interaction.guild_id, 0)).default_model
        head = "Pick one with `/imagine model:` (pictures default to the model's native size):"
        await reply(interaction, lines_within([head, *(model_line(e, default) for e in found)]))

    default_model = app_commands.Group(
        name="default-model",
        description="The model /imagine uses in this server when a member names none",
        guild_only=True,
        default_permissions=ADMIN_PERMISSIONS,
    )

    @default_model.command(name="set", description="Use this model when a member names none")
    @app_commands.describe(model="A model from /models")
    @admin_only()
    async def set_(
        self, interaction: discord.Interaction, model: app_commands.Range[str, 1, bounds.MODEL_NAME_CHARS]
    ) -> None:
        assert interaction.guild_id is not None
        name = model.strip()
        entry = await asyncio.to_thread(models_dir.entry_for, self.bot.settings, name)
        if entry is None or entry.family is None:
            raise PolicyError(f"There is no usable model called {code(name, 60)}; `/models` lists them.")
        guild = interaction.guild
        old = await self.store.set_default_model(
            interaction.guild_id, guild.name if guild else "", entry.name, actor_id=interaction.user.id
        )
        was = f" (was {code(old)})" if old and old != entry.name else ""
        await reply(interaction, f"✅ /imagine now uses {code(entry.name)} here when no model is named{was}.")

    @set_.autocomplete("model")
    async def _set_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        if not caller_is_admin(interaction):
            return []
        found = await within_budget(asyncio.to_thread(models_dir.choices, self.bot.settings, current))
        return [app_commands.Choice(name=label, value=value) for label, value in found]

    @default_model.command(name="clear", description="Go back to the bot's own default model")
    @admin_only()
    async def clear(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        guild = interaction.guild
        old = await self.store.set_default_model(
            interaction.guild_id, guild.name if guild else "", None, actor_id=interaction.user.id
        )
        if old is None:
            await reply(interaction, "This server had no default model of its own; nothing changed.")
        else:
            await reply(interaction, f"✅ {code(old)} is no longer this server's default model.")
