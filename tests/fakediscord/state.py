"""The fake Discord's world model: users, guilds, roles, channels, members, messages, interactions.

Everything here is plain data plus the pure rules Discord applies to it (permission arithmetic, message
validation, JSON shapes). Networking lives in ``server.py``; it subclasses :class:`World` and overrides
:meth:`World._emit` to turn world changes into gateway events.

JSON builders produce exactly the keys discord.py 2.7 reads (see /work/shared/DISCORD_PROTOCOL.md); ids are
strings on the wire like on real Discord.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import mimetypes
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions). Only the ones the fake or a
# test is likely to name; any int works.
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = (1 << 53) - 1  # a superset of discord.Permissions.all()

# What a fresh guild's @everyone gets on real Discord (roughly) and what a freshly invited bot gets.
DEFAULT_EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
)
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_COMPONENTS_V2 = 1 << 15

MAX_CONTENT = 2000
MAX_FILES = 10
MAX_EMBEDS = 10
MAX_REACTIONS = 20


class ApiError(Exception):
    """A Discord error answer: HTTP status plus the JSON ``{"code", "message"[, "errors"]}`` body."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def invalid_form(field_name: str, message: str, code: str = "BASE_TYPE_INVALID") -> ApiError:
    """400 code 50035, the shape Discord uses for every payload validation failure."""
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return ApiError(400, 50035, "Invalid Form Body", errors)


def as_int(value: Any) -> int:
    """A snowflake from the wire (str or int); -1 for garbage, which matches nothing."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --------------------------------------------------------------------------------------------- models
@dataclass(eq=False)
class FakeUser:
    id: int
    username: str
    bot: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": None if self.bot else self.username,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeChannel:
    id: int
    guild_id: int | None
    name: str
    type: int = 0  # 0 guild text, 1 DM
    nsfw: bool = False
    position: int = 0
    recipient: FakeUser | None = None  # DMs only

    def to_json(self) -> dict[str, Any]:
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.recipient.to_json()],
            }  # type: ignore[union-attr]
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "nsfw": self.nsfw,
            "topic": None,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "permission_overwrites": [],
        }


@dataclass(eq=False)
class FakeMember:
    guild_id: int
    user: FakeUser
    role_ids: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def to_json(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids],
            "joined_at": self.joined_at,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_json()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    bot_role: FakeRole | None = None  # the managed role Discord gives an invited bot

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]  # @everyone shares the guild's id

    def permissions_for(self, user_id: int) -> int:
        """Guild-level permissions as Discord computes them (no channel overwrites exist in the fake)."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user_id)
        if member is None:
            return 0
        perms = self.everyone.permissions
        for role_id in member.role_ids:
            perms |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms


@dataclass(eq=False)
class FakeAttachment:
    id: int
    filename: str
    content_type: str
    data: bytes
    size: int
    url: str
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            data["description"] = self.description
        # Discord reports image dimensions; PNG's are at a fixed offset, cheap to read.
        if self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            data["width"], data["height"] = struct.unpack(">II", self.data[16:24])
        return data


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, depth first (action rows, v2 containers and sections nest others)."""
    for comp in components:
        yield comp
        yield from walk_components(comp.get("components") or [])
        if isinstance(comp.get("accessory"), dict):
            yield comp["accessory"]


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    interaction_id: int | None = None
    message_reference: dict[str, Any] | None = None
    reactions: dict[str, set[int]] = field(default_factory=dict)  # emoji ("🔁" or "name:id") -> user ids
    deleted: bool = False
    edits: int = 0
    type: int = 0
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    interaction_metadata: dict[str, Any] | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred ("thinking") interaction response not filled in yet."""
        return bool(self.flags & FLAG_LOADING)

    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in walk_components(self.components) if c.get("type") == 2]

    def button_custom_ids(self) -> list[str]:
        """All custom_ids in the components (buttons and select menus)."""
        return [c["custom_id"] for c in walk_components(self.components) if c.get("custom_id")]


@dataclass(eq=False)
class FakeInteraction:
    id: int
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete, 5 modal submit
    created_at: float  # time.monotonic()
    guild_id: int | None
    channel_id: int
    user: FakeUser
    payload: dict[str, Any]  # the INTERACTION_CREATE body as dispatched
    message: FakeMessage | None = None  # the message a clicked component is on
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # accepted initial responses
    rejected: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (error code, body) refused
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    autocomplete_choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None  # data of a type 9 (modal) response
    late: bool = False
    expired: bool = False
    _responded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def deferred(self) -> bool:
        return bool(self.callbacks) and self.callbacks[0]["type"] in (5, 6)

    @property
    def ephemeral(self) -> bool:
        if not self.callbacks:
            return False
        return bool(((self.callbacks[0].get("data") or {}).get("flags") or 0) & FLAG_EPHEMERAL)

    @property
    def responded(self) -> bool:
        return bool(self.callbacks)

    async def wait_response(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Wait for the bot's first callback (accepted, or refused as late)."""
        try:
            await asyncio.wait_for(self._responded.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"the bot did not answer interaction {self.id} within {timeout}s") from None


# ---------------------------------------------------------------------------------------------- world
class World:
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

    def add_channel(self, guild: FakeGuild, name: str = "general", *, nsfw: bool = False) -> FakeChannel:
        channel = FakeChannel(self.snowflake(), guild.id, name, 0, nsfw, len(guild.channels))
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

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once ``predicate()`` is true. Re-checked on every world change and every 50 ms (so
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
            "channels": [c.to_json() for c in guild.channels.values()],
            "threads": [],
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

    def message_json(self, msg: FakeMessage, *, with_reference: bool = True) -> dict[str, Any]:
        author = self.users[msg.author_id]
        data: dict[str, Any] = {
            "id": str(msg.id),
            "type": msg.type,
            "channel_id": str(msg.channel_id),
            "author": author.to_json(),
            "content": msg.content,
            "timestamp": msg.timestamp,
            "edited_timestamp": msg.edited_timestamp,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_json() for a in msg.attachments],
            "embeds": msg.embeds,
            "components": msg.components,
            "reactions": [
                {
                    "emoji": emoji_json(emoji),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.bot_user.id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in msg.reactions.items()
            ],
            "pinned": False,
            "flags": msg.flags,
        }
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
            member = self.guilds[msg.guild_id].members.get(msg.author_id)
            if member is not None:
                data["member"] = member.to_json(with_user=False)
        if msg.interaction_id is not None:
            data["webhook_id"] = str(self.application_id)
            data["application_id"] = str(self.application_id)
        if msg.interaction_metadata is not None:
            data["interaction_metadata"] = msg.interaction_metadata
        if msg.message_reference is not None:
            data["message_reference"] = msg.message_reference
            ref = self.get_message(as_int(msg.message_reference.get("message_id")))
            if with_reference:
                ok = ref is not None and not ref.deleted
                data["referenced_message"] = self.message_json(ref, with_reference=False) if ok else None  # type: ignore[arg-type]
        return data

    # ---------------------------------------------------------------------------------- messages
    def make_attachment(self, filename: str, data: bytes, content_type: str | None = None) -> FakeAttachment:
        # discord.py uploads everything as application/octet-stream; Discord sniffs the real type.
        guessed = mimetypes.guess_type(filename)[0]
        if guessed is None and content_type and content_type != "application/octet-stream":
            guessed = content_type
        att_id = self.snowflake()
        url = f"{self.http_base}/attachments/{att_id}/{quote(filename)}"
        att = FakeAttachment(att_id, filename, guessed or "application/octet-stream", data, len(data), url)
        self.attachments[att.id] = att
        return att

    def validate_message(self, payload: dict[str, Any], uploads: list[Upload], *, creating: bool) -> None:
        """Discord's message limits. Raises :class:`ApiError` like Discord would."""
        for up in uploads:
            if len(up.data) > self.attachment_size_limit:
                raise ApiError(413, 40005, "Request entity too large")
        if len(uploads) > MAX_FILES:
            raise invalid_form("files", f"Must be {MAX_FILES} or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        content = payload.get("content") or ""
        if len(content) > MAX_CONTENT:
            raise invalid_form("content", "Must be 2000 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        embeds = payload.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            raise invalid_form("embeds", "Must be 10 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        components = payload.get("components") or []
        self._validate_components(components, v2=bool((payload.get("flags") or 0) & FLAG_COMPONENTS_V2))
        kept = [a for a in payload.get("attachments") or [] if as_int(a.get("id")) in self.attachments]
        if creating and not (content or embeds or components or uploads or kept or payload.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _validate_components(self, components: list[dict[str, Any]], *, v2: bool) -> None:
        if not v2:
            if len(components) > 5:
                raise invalid_form("components", "Must be 5 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
            for i, row in enumerate(components):
                if row.get("type") != 1:
                    raise invalid_form(f"components.{i}", "Top-level components must be action rows.")
                if not 1 <= len(row.get("components") or []) <= 5:
                    raise invalid_form(f"components.{i}.components", "Must be between 1 and 5 in length.")
        seen: set[str] = set()
        for comp in walk_components(components):
            if comp.get("type") == 2 and comp.get("style") == 5:  # link buttons carry a url, no custom_id
                if not comp.get("url"):
                    raise invalid_form("components", "Link buttons need a url.")
                continue
            if comp.get("type") in (2, 3, 4, 5, 6, 7, 8) or "custom_id" in comp:
                custom_id = comp.get("custom_id") or ""
                if not 1 <= len(custom_id) <= 100:
                    raise invalid_form(
                        "components", "custom_id must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
                    )
                if custom_id in seen:
                    raise invalid_form("components", "Component custom id cannot be duplicated.")
                seen.add(custom_id)

    def new_attachments(self, payload: dict[str, Any], uploads: list[Upload]) -> list[FakeAttachment]:
        """Attachments for freshly uploaded ``files[n]``; the ``attachments`` entry with ``id == n`` may
        rename the file or describe it."""
        entries = {str(a.get("id")): a for a in payload.get("attachments") or []}
        out = []
        for up in uploads:
            entry = entries.get(str(up.index), {})
            att = self.make_attachment(entry.get("filename") or up.filename, up.data, up.content_type)
            att.description = entry.get("description")
            out.append(att)
        return out

    def create_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        uploads: list[Upload],
        *,
        interaction: FakeInteraction | None = None,
        msg_type: int = 0,
        extra_flags: int = 0,
    ) -> FakeMessage:
        self.validate_message(payload, uploads, creating=not extra_flags & FLAG_LOADING)
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author_id=author.id,
            content=payload.get("content") or "",
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=self.new_attachments(payload, uploads),
            flags=((payload.get("flags") or 0) & (FLAG_EPHEMERAL | FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2))
            | extra_flags,
            type=msg_type,
        )
        ref = payload.get("message_reference")
        if ref and ref.get("message_id"):
            target = self.get_message(as_int(ref["message_id"]))
            if (target is None or target.deleted) and ref.get("fail_if_not_exists", True):
                raise invalid_form(
                    "message_reference", "Unknown message", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE"
                )
            msg.message_reference = {
                "type": 0,
                "message_id": str(ref["message_id"]),
                "channel_id": str(channel.id),
                "guild_id": str(channel.guild_id) if channel.guild_id else None,
            }
            msg.type = 19  # REPLY
        if interaction is not None:
            msg.interaction_id = interaction.id
            msg.interaction_metadata = self._interaction_metadata(interaction, msg)
        self.messages.append(msg)
        self._messages_by_id[msg.id] = msg
        if not msg.ephemeral:
            self._emit("MESSAGE_CREATE", self.message_json(msg))
        self._changed()
        return msg

    def edit_message(self, msg: FakeMessage, payload: dict[str, Any], uploads: list[Upload]) -> None:
        self.validate_message(payload, uploads, creating=False)
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            msg.components = list(payload["components"] or [])
        if payload.get("flags") is not None:
            # Only the suppress-embeds and components-v2 bits are editable; ephemeral is fixed at creation.
            editable = FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2
            msg.flags = (msg.flags & ~editable) | (payload["flags"] & editable)
        new = self.new_attachments(payload, uploads)
        if "attachments" in payload and payload["attachments"] is not None:
            # The attachments list is the full wanted set: existing ids are kept, everything else dropped.
            keep = {str(a.get("id")) for a in payload["attachments"]}
            msg.attachments = [a for a in msg.attachments if str(a.id) in keep] + new
        else:
            msg.attachments = msg.attachments + new
        msg.flags &= ~FLAG_LOADING  # editing a deferred response fills it in
        msg.edits += 1
        msg.edited_timestamp = iso_now()
        if not msg.ephemeral:
            self._emit("MESSAGE_UPDATE", self.message_json(msg))
        self._changed()

    def delete_message(self, msg: FakeMessage) -> None:
        msg.deleted = True
        if not msg.ephemeral:
            data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            self._emit("MESSAGE_DELETE", data)
        self._changed()

    def _interaction_metadata(self, interaction: FakeInteraction, msg: FakeMessage) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": interaction.user.to_json(),
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        if interaction.type == 2:
            meta["name"] = interaction.payload["data"]["name"]
        if interaction.original is not None and interaction.original is not msg:
            meta["original_response_message_id"] = str(interaction.original.id)
        if interaction.message is not None:
            meta["interacted_message_id"] = str(interaction.message.id)
        return meta

    # --------------------------------------------------------------------------------- reactions
    def add_reaction(self, msg: FakeMessage, emoji: str, user: FakeUser) -> None:
        if emoji not in msg.reactions and len(msg.reactions) >= MAX_REACTIONS:
            raise ApiError(400, 30010, "Maximum number of reactions reached (20)")
        users = msg.reactions.setdefault(emoji, set())
        if user.id in users:
            return  # Discord answers 204 and sends no event for a duplicate
        users.add(user.id)
        data = self._reaction_event(msg, emoji, user)
        data["message_author_id"] = str(msg.author_id)
        data["burst_colors"] = []
        if msg.guild_id is not None:
            member = self.guilds[msg.guild_id].members.get(user.id)
            if member is not None:
                data["member"] = member.to_json()
        self._emit("MESSAGE_REACTION_ADD", data)
        self._changed()

    def remove_reaction(self, msg: FakeMessage, emoji: str, user: FakeUser) -> None:
        users = msg.reactions.get(emoji)
        if not users or user.id not in users:
            return
        users.discard(user.id)
        if not users:
            del msg.reactions[emoji]
        self._emit("MESSAGE_REACTION_REMOVE", self._reaction_event(msg, emoji, user))
        self._changed()

    def _reaction_event(self, msg: FakeMessage, emoji: str, user: FakeUser) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(msg.channel_id),
            "message_id": str(msg.id),
            "emoji": emoji_json(emoji),
            "type": 0,
            "burst": False,
        }
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        return data


@dataclass
class Upload:
    """One ``files[n]`` part of a multipart request."""

    index: int
    filename: str
    data: bytes
    content_type: str


def emoji_json(emoji: str) -> dict[str, Any]:
    """``"🔁"`` -> unicode emoji; ``"name:123"`` (the URL form of a custom emoji) -> custom emoji."""
    name, _, maybe_id = emoji.rpartition(":")
    if name and maybe_id.isdigit():
        return {"id": maybe_id, "name": name, "animated": False}
    return {"id": None, "name": emoji}
