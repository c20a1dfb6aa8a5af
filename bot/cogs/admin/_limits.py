"""/limits show|set|reset|history: per-guild limits, overridable per role and per user, no file to edit."""

from __future__ import annotations

import re

import discord
from discord import app_commands

from bot.cogs.common import (
    ADMIN_PERMISSIONS,
    FriendlyErrors,
    admin_only,
    lines_within,
    reply,
    safe,
    stamp,
)
from bot.jobs.admission import overrides_of
from bot.jobs.limits import SPECS, LimitName, Override, Scope, resolve
from bot.jobs.policy import PolicyError

SETTINGS = [app_commands.Choice(name=n.value, value=n.value) for n in LimitName]
ORDER = (
    "_A member's own override wins, then the most generous of their roles, then the server's, "
    "then the bot's default._"
)
SOURCES = {"default": "bot default", "guild": "server", "role": "role", "user": "user"}


def limit_named(setting: str) -> LimitName:
    try:
        return LimitName(setting)
    except ValueError:
        raise PolicyError(f"There is no limit called `{setting[:40]}`; pick one from the list.") from None


def target_label(scope: Scope, target_id: int, guild_id: int) -> str:
    if scope is Scope.GUILD:
        return "the whole server"
    if scope is Scope.ROLE:
        return "@everyone" if target_id == guild_id else f"<@&{target_id}>"
    return f"<@{target_id}>"


def readable(target: str) -> str:
    """An audit target (``role:123 daily_images``) with mentions the reader's client can render."""
    target = re.sub(r"\buser:(\d+)", r"<@\1>", target[:120])
    target = re.sub(r"\brole:(\d+)", r"<@&\1>", target)
    return re.sub(r"\bguild:\d+", "server", target)


def target_of(
    interaction: discord.Interaction, role: discord.Role | None, user: discord.User | None
) -> tuple[Scope, int]:
    """Whom a change applies to: a role of this server, a user, or (neither given) the whole server."""
    guild_id = interaction.guild_id
    assert guild_id is not None  # admin_only() refused direct messages already
    if role is not None and user is not None:
        raise PolicyError("Give a role or a user, not both.")
    if role is not None:
        # The role must be one of this guild's: a forged interaction could name another guild's role.
        guild = interaction.guild
        if guild is None or guild.get_role(role.id) is None:
            raise PolicyError("That role is not in this server.")
        return Scope.ROLE, role.id
    if user is not None:
        return Scope.USER, user.id
    return Scope.GUILD, guild_id


class LimitsCog(FriendlyErrors):
    limits = app_commands.Group(
        name="limits",
        description="See and change this server's image limits",
        guild_only=True,
        default_permissions=ADMIN_PERMISSIONS,
    )

    @limits.command(name="show", description="Show the limits here, or those that apply to a member or role")
    @app_commands.describe(user="Show what applies to this member", role="Show what applies to this role")
    @admin_only()
    async def show(
        self,
        interaction: discord.Interaction,
        user: discord.User | None = None,
        role: discord.Role | None = None,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        target_of(interaction, role, user)  # validates the combination and the role
        overrides = overrides_of(await self.store.overrides(guild_id))
        if user is not None:
            roles: list[int] = [r.id for r in user.roles] if isinstance(user, discord.Member) else []
            effective = resolve(self.bot.admission.defaults, overrides, user_id=user.id, role_ids=roles)
            title = f"**Limits for <@{user.id}>**"
        elif role is not None:
            effective = resolve(self.bot.admission.defaults, overrides, role_ids=[role.id])
            title = f"**Limits for members of {target_label(Scope.ROLE, role.id, guild_id)}**"
        else:
            effective = resolve(self.bot.admission.defaults, overrides)
            title = "**Limits in this server**"
        lines = [title, ORDER]
        for name in LimitName:
            spec, source = SPECS[name], SOURCES[effective.sources[name]]
            lines.append(f"`{name}` **{spec.show(effective[name])}** · {source} — {spec.help}")
        if overrides:
            lines.append("**Overrides**")
            by_target: dict[tuple[Scope, int], list[Override]] = {}
            for o in overrides:
                by_target.setdefault((o.scope, o.target_id), []).append(o)
            for (scope, target), items in sorted(
                by_target.items(), key=lambda kv: (kv[0][0] != Scope.GUILD,)
            ):
                values = ", ".join(f"`{o.name}` = {SPECS[o.name].show(o.value)}" for o in items)
                lines.append(f"• {target_label(scope, target, guild_id)}: {values}")
        await reply(interaction, lines_within(lines))

    @limits.command(name="set", description="Set a limit for the server, a role or one member")
    @app_commands.describe(
        setting="Which limit",
        value="New value (allow_img2img: 1 yes, 0 no)",
        role="Only for members with this role (the most generous of a member's roles counts)",
        user="Only for this member (beats roles and the server setting)",
    )
    @app_commands.choices(setting=SETTINGS)
    @admin_only()
    async def set_(
        self,
        interaction: discord.Interaction,
        setting: str,
        value: int,
        role: discord.Role | None = None,
        user: discord.User | None = None,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        name = limit_named(setting)
        spec = SPECS[name]
        spec.check(value)
        scope, target = target_of(interaction, role, user)
        old = await self.store.set_limit(guild_id, scope, target, name, value, actor_id=interaction.user.id)
        before = "not set" if old is None else spec.show(old)
        await reply(
            interaction,
            f"✅ `{name}` for {target_label(scope, target, guild_id)}: {before} → **{spec.show(value)}**.",
        )

    @limits.command(name="reset", description="Remove an override, so the next level applies again")
    @app_commands.describe(setting="Which limit", role="The role's override", user="The member's override")
    @app_commands.choices(setting=SETTINGS)
    @admin_only()
    async def reset(
        self,
        interaction: discord.Interaction,
        setting: str,
        role: discord.Role | None = None,
        user: discord.User | None = None,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        name = limit_named(setting)
        scope, target = target_of(interaction, role, user)
        old = await self.store.reset_limit(guild_id, scope, target, name, actor_id=interaction.user.id)
        label = target_label(scope, target, guild_id)
        if old is None:
            await reply(interaction, f"`{name}` has no override for {label}; nothing to reset.")
            return
        await reply(interaction, f"✅ `{name}` for {label}: {SPECS[name].show(old)} → not set (inherited).")

    @limits.command(name="history", description="Recent changes to limits, bans and the blocklist")
    @admin_only()
    async def history(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        entries = await self.store.audit_log(guild_id, limit=20)
        if not entries:
            await reply(interaction, "No changes recorded yet.")
            return
        lines = ["**Recent changes**"]
        for e in entries:
            change = f"{safe(e.old_value or '—', 80)} → {safe(e.new_value or '—', 80)}"
            lines.append(
                f"{stamp(e.created_at, 'f')} <@{e.actor_id}> `{e.action}` {readable(e.target)}: {change}"
            )
        await reply(interaction, lines_within(lines))
