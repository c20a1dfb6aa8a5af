"""Who counts as an admin of a guild, checked in the bot as well as by Discord's command gate
(a guild can loosen that gate in its settings, and buttons have no gate at all)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

if TYPE_CHECKING:
    from bot.settings import Settings


def is_admin(settings: Settings, user: discord.abc.User, permissions: discord.Permissions | None) -> bool:
    """Manage Server or Administrator in this guild, a role listed in ADMIN_ROLE_IDS, or ADMIN_USER_IDS."""
    if user.id in settings.admin_user_ids:
        return True
    if isinstance(user, discord.Member) and any(r.id in settings.admin_role_ids for r in user.roles):
        return True
    return permissions is not None and (permissions.manage_guild or permissions.administrator)
