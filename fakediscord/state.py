"""The fake Discord's world: everything that exists (users, guilds, channels, messages, interactions) and
the waits tests block on. No I/O except waking waiters.

Data classes and their JSON are in ``models.py``, permission arithmetic in ``permissions.py``, message
rules in ``messages.py``, threads/overwrites/deletions in ``topology.py``. Networking lives in
``server.py``: it subclasses :class:`World` and overrides :meth:`World._emit` to turn world changes into
gateway events. Names other modules used to import from here are re-exported.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from .messages import MessageRules
from .models import (
    DISCORD_EPOCH_MS,
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    GUILD_TEXT,
    ApiError,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Upload,
    as_int,
    emoji_json,
    invalid_form,
    iso_now,
    walk_components,
)
from .permissions import (
    ADD_REACTIONS,
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    EMBED_LINKS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    USE_APPLICATION_COMMANDS,
    VIEW_CHANNEL,
)
from .topology import Topology

__all__ = [  # re-exports: existing imports of these names from .state keep working
    "ADD_REACTIONS",
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "ATTACH_FILES",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "EMBED_LINKS",
    "FLAG_COMPONENTS_V2",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "FLAG_SUPPRESS_EMBEDS",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "READ_MESSAGE_HISTORY",
    "SEND_MESSAGES",
    "USE_APPLICATION_COMMANDS",
    "VIEW_CHANNEL",
    "ApiError",
    "FakeAttachment",
    "FakeChannel",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "Upload",
    "World",
    "as_int",
    "emoji_json",
    "invalid_form",
    "walk_components",
]


class World(Topology, MessageRules):
    """All state of the fake Discord, plus the rules; no I/O except waking waiters."""

    def __init__(self, *, attachment_size_limit: int) -> None:
        self.attachment_size_limit = attachment_size_limit
        self._last_snowflake = 0
        self._increment = itertools.count()
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: list[FakeMessage] = []
        self._messages_by_id: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self.application_id = self.snowflake()
        self.bot_user = self.add_user("ImagineBot", bot=True)
        self.app_owner = self.add_user("developer")

    # Overridden by the server: where attachment URLs point, and how changes reach the gateway.
    @property
    def http_base(self) -> str:
        return "http://127.0.0.1:0"

    def _emit(self, event: str, data: dict[str, Any] | Callable[[int], dict[str, Any]]) -> None:
        """Send a gateway dispatch to connected bots. ``data`` may be a function of the session's intents."""

    def snowflake(self) -> int:
        # Real layout (timestamp << 22 | increment), forced strictly increasing so ids sort by creation.
        value = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._increment) & 0xFFF)
        self._last_snowflake = max(value, self._last_snowflake + 1)
        return self._last_snowflake

    # ------------------------------------------------------------------------------ world building
    def add_user(self, username: str, *, bot: bool = False) -> FakeUser:
        user = FakeUser(self.snowflake(), username, bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: FakeUser | None = None,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
    ) -> FakeGuild:
        owner = owner or self.add_user(f"{name} owner".replace(" ", "_").lower())
        guild = FakeGuild(self.snowflake(), name, owner.id)
        guild.roles[guild.id] = FakeRole(guild.id, guild.id, "@everyone", everyone_permissions, 0)
        guild.bot_role = FakeRole(
            self.snowflake(), guild.id, self.bot_user.username, bot_permissions, 1, True
        )
        guild.roles[guild.bot_role.id] = guild.bot_role
        guild.members[owner.id] = FakeMember(guild.id, owner)
        guild.members[self.bot_user.id] = FakeMember(guild.id, self.bot_user, [guild.bot_role.id])
        self.guilds[guild.id] = guild
        self._emit("GUILD_CREATE", lambda intents: self.guild_create_json(guild, intents))
        self._changed()
        return guild

    def add_channel(
        self, guild: FakeGuild, name: str = "general", *, nsfw: bool = False, type: int = GUILD_TEXT
    ) -> FakeChannel:
        """A text channel (or, with ``type=15``, a forum: see :meth:`add_forum`)."""
        position = sum(not c.is_thread for c in guild.channels.values())
        channel = FakeChannel(self.snowflake(), guild.id, name, type, nsfw, position)
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self._emit("CHANNEL_CREATE", channel.to_json())
        return channel

    def add_role(self, guild: FakeGuild, name: str, *, permissions: int = 0) -> FakeRole:
        role = FakeRole(self.snowflake(), guild.id, name, permissions, len(guild.roles))
        guild.roles[role.id] = role
        self._emit("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_json()})
        return role

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: list[FakeRole] | tuple[FakeRole, ...] = (),
        permissions: int | None = None,
    ) -> FakeMember:
        """Join ``user`` to ``guild``. ``permissions`` grants exactly these bits through an auto-created
        role (on top of what @everyone grants, as on real Discord)."""
        role_ids = [r.id for r in roles]
        if permissions is not None:
            role_ids.append(self.add_role(guild, f"{user.username}-perms", permissions=permissions).id)
        member = FakeMember(guild.id, user, role_ids)
        guild.members[user.id] = member
        self._emit("GUILD_MEMBER_ADD", {"guild_id": str(guild.id), **member.to_json()})
        self._changed()
        return member

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The bot's DM channel with ``user`` (created on first use, like POST /users/@me/channels)."""
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient is user:
                return channel
        channel = FakeChannel(self.snowflake(), None, "", 1, recipient=user)
        self.channels[channel.id] = channel
        return channel

    # -------------------------------------------------------------------------------- observation
    def commands_for(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """What the bot registered: global commands, or one guild's."""
        return self.global_commands if guild is None else self.guild_commands.get(guild.id, [])

    def find_command(self, name: str, guild: FakeGuild | None) -> dict[str, Any] | None:
        """The command a user in ``guild`` sees under ``name`` (guild commands shadow global ones)."""
        pools = ([self.guild_commands.get(guild.id, [])] if guild else []) + [self.global_commands]
        for pool in pools:
            for cmd in pool:
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        return None

    def channel_messages(self, channel: FakeChannel) -> list[FakeMessage]:
        """Messages visible in the channel (not deleted, not ephemeral), oldest first."""
        return [m for m in self.messages if m.channel_id == channel.id and not m.deleted and not m.ephemeral]

    def get_message(self, message_id: int) -> FakeMessage | None:
        return self._messages_by_id.get(message_id)

    def _changed(self) -> None:
        """Wake everything blocked in wait_until/wait_for_message to re-check its predicate."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once ``predicate()`` is truthy. Re-checked on every world change and every 50 ms (so
        predicates about the bot's own state work too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s; {self._recent_summary()}")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            await asyncio.wait({fut}, timeout=min(remaining, 0.05))

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool],
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> FakeMessage:
        """The first message (existing or future, re-checked after every create and edit) matching."""
        found: list[FakeMessage] = []

        def check() -> bool:
            found[:] = [m for m in self.messages if predicate(m)][:1]
            return bool(found)

        await self.wait_until(check, timeout)
        return found[0]

    def _recent_summary(self) -> str:
        recent = [
            f"#{m.id} content={m.content[:60]!r} files={[a.filename for a in m.attachments]}"
            f"{' deleted' if m.deleted else ''}"
            for m in self.messages[-5:]
        ]
        return f"{len(self.messages)} messages, last: {recent}"

    # ------------------------------------------------------------------------------------- JSON
    def guild_create_json(self, guild: FakeGuild, intents: int) -> dict[str, Any]:
        # Without GUILD_MEMBERS Discord only sends the bot's own member; member_count is the true total.
        # With it, member_count == len(members) tells discord.py the guild is chunked (no op 8 needed).
        members = list(guild.members.values())
        if not intents & (1 << 1):
            members = [m for m in members if m.id == self.bot_user.id]
        return {
            **self.guild_json(guild),
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "members": [m.to_json() for m in members],
            "channels": [c.to_json() for c in guild.channels.values() if not c.is_thread],
            "threads": [c.to_json() for c in guild.channels.values() if c.is_thread and not c.archived],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def guild_json(self, guild: FakeGuild) -> dict[str, Any]:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_json() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "application_id": None,
            "approximate_member_count": len(guild.members),
        }
