"""/ban, /unban and /blocklist add|remove|list, each scoped to the guild it is used in."""

from __future__ import annotations

import discord
from discord import app_commands

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
from bot.jobs.blocklist import CHECKER
from bot.jobs.policy import PolicyError

MAX_REASON = 500
MAX_TERMS = 500  # every prompt is matched against all of them


class ModerationCog(FriendlyErrors):
    blocklist = app_commands.Group(
        name="blocklist",
        description="Words, phrases or /regexes/ refused in prompts here",
        guild_only=True,
        default_permissions=ADMIN_PERMISSIONS,
    )

    # ------------------------------------------------------------------------------------- bans

    @app_commands.command(name="ban", description="Stop a member from making pictures in this server")
    @app_commands.describe(user="Who", reason="Why (they are told)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def ban(
        self, interaction: discord.Interaction, user: discord.User, reason: str | None = None
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        reason = " ".join((reason or "").split())
        if len(reason) > MAX_REASON:
            raise PolicyError(f"The reason is {len(reason)} characters; the most is {MAX_REASON}.")
        if user.id == interaction.user.id:
            raise PolicyError("You can't ban yourself.")
        existing = await self.store.ban(guild_id, user.id, reason, actor_id=interaction.user.id)
        if existing is not None:
            await reply(interaction, f"<@{user.id}> is already banned here.")
            return
        # Work they already queued here goes too: a ban that lets the queue run on would not stop anything.
        cancelled = 0
        for job in self.bot.jobs.active_jobs():
            if job.user_id == user.id and job.guild_id == guild_id and await self.bot.jobs.cancel(job.id):
                cancelled += 1
        extra = f" and cancelled {cancelled} of their jobs" if cancelled else ""
        await reply(interaction, f"✅ Banned <@{user.id}> from making pictures here{extra}.")

    @app_commands.command(name="unban", description="Let a banned member make pictures again")
    @app_commands.describe(user="Who")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        if await self.store.unban(guild_id, user.id, actor_id=interaction.user.id):
            await reply(interaction, f"✅ <@{user.id}> can make pictures here again.")
        else:
            await reply(interaction, f"<@{user.id}> is not banned here.")

    # ---------------------------------------------------------------------------------- blocklist

    # Discord caps option descriptions at 100 characters; the full rules are in bot/jobs/blocklist.py
    # and the README, and the answer to /blocklist add repeats them.
    @blocklist.command(name="add", description="Refuse prompts containing a word, phrase or /regex/")
    @app_commands.describe(
        term=(
            "A word or phrase (whole words; _, digits, zero-width split words; look-alikes fold) "
            "or /RE2 regex/"
        )
    )
    @admin_only()
    async def add(self, interaction: discord.Interaction, term: str) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        compiled = await CHECKER.compile(term)  # refuses empty, overlong and unusable (non-RE2) terms
        if len(await self.store.terms(guild_id)) >= MAX_TERMS:
            raise PolicyError(
                f"This server already blocks {MAX_TERMS} terms, the most I keep. Remove some first."
            )
        if not await self.store.add_term(guild_id, compiled.raw, actor_id=interaction.user.id):
            await reply(interaction, f"{code(compiled.raw)} is already on the blocklist.")
            return
        how = (
            "RE2 regular expression, any case, matched against the prompt with accents and look-alikes folded"
            if compiled.is_regex
            else "whole words, any case, accents and look-alikes; underscores, digits and zero-width "
            "characters count as word breaks, so `word_x` and `word2` match too"
        )
        await reply(interaction, f"✅ Blocked {code(compiled.raw)} ({how}).")

    @blocklist.command(name="remove", description="Allow a blocked term again")
    @app_commands.describe(term="The term exactly as listed by /blocklist list")
    @admin_only()
    async def remove(self, interaction: discord.Interaction, term: str) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        raw = term.strip()
        if await self.store.remove_term(guild_id, raw, actor_id=interaction.user.id):
            await reply(interaction, f"✅ {code(raw)} is no longer blocked.")
        else:
            await reply(interaction, f"{code(raw)} is not on the blocklist; see `/blocklist list`.")

    @remove.autocomplete("term")
    async def _terms(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        # Autocomplete skips the command's checks: without this, any member could read the blocklist here.
        if interaction.guild_id is None or not caller_is_admin(interaction):
            return []
        wanted = current.lower()
        known = await within_budget(self.store.terms(interaction.guild_id))
        terms = [t for t in known if wanted in t.lower()]
        return [app_commands.Choice(name=t[:100], value=t[:100]) for t in terms[:25]]

    @blocklist.command(name="list", description="Show the blocked terms")
    @admin_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        terms = await self.store.terms(guild_id)
        if not terms:
            await reply(interaction, "Nothing is blocked here. Add terms with `/blocklist add`.")
            return
        lines = [f"**Blocked terms ({len(terms)})**"] + [f"• {code(t)}" for t in terms]
        await reply(interaction, lines_within(lines))
