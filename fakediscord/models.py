"""The fake Discord's data: users, guilds, roles, channels (text, forum, threads, DMs), members, messages,
interactions, and their JSON shapes (exactly the keys discord.py 2.7 reads; ids are strings on the wire).

The world that holds them and the rules that change them are in ``state.py`` and ``messages.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .permissions import (
    ALL_PERMISSIONS,
    MANAGE_THREADS,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    Overwrite,
    apply_overwrites,
    base_permissions,
    implicit,
)

DISCORD_EPOCH_MS = 1420070400000

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


# Channel types.
GUILD_TEXT = 0
DM = 1
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
GUILD_FORUM = 15
THREAD_TYPES = (PUBLIC_THREAD, PRIVATE_THREAD)


@dataclass(eq=False)
class FakeChannel:
    id: int
    guild_id: int | None
    name: str
    type: int = GUILD_TEXT  # 0 text, 1 DM, 11/12 public/private thread, 15 forum
    nsfw: bool = False
    position: int = 0
    recipient: FakeUser | None = None  # DMs only
    overwrites: dict[int, Overwrite] = field(default_factory=dict)  # role or user id -> overwrite
    # Threads only:
    parent_id: int | None = None  # the text or forum channel it lives in
    owner_id: int | None = None  # who started it
    archived: bool = False
    locked: bool = False
    member_ids: set[int] = field(default_factory=set)  # thread members (who may see a private thread)
    created_at: str = field(default_factory=iso_now)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def to_json(self) -> dict[str, Any]:
        if self.type == DM:
            assert self.recipient is not None, "a DM channel is made with its recipient"
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.recipient.to_json()],
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "nsfw": self.nsfw,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }
        if self.is_thread:
            data.update(
                owner_id=str(self.owner_id) if self.owner_id else None,
                message_count=0,
                member_count=len(self.member_ids),
                total_message_sent=0,
                applied_tags=[],
                thread_metadata={
                    "archived": self.archived,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": self.created_at,
                    "locked": self.locked,
                    "invitable": self.type == PRIVATE_THREAD,
                    "create_timestamp": self.created_at,
                },
            )
            return data
        data.update(
            position=self.position,
            topic=None,
            permission_overwrites=[ow.to_json() for ow in self.overwrites.values()],
        )
        if self.type == GUILD_FORUM:
            data.update(
                available_tags=[],
                default_reaction_emoji=None,
                default_thread_rate_limit_per_user=0,
                default_sort_order=None,
                default_forum_layout=0,
            )
        return data


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

    def permissions_for(self, user_id: int, channel: FakeChannel | None = None) -> int:
        """Permissions as Discord computes them: guild-wide (roles), or in ``channel`` (roles, then the
        channel's overwrites; a thread uses its parent's, and a private thread is hidden from non-members
        without MANAGE_THREADS)."""
        member = self.members.get(user_id)
        if member is None:
            return 0
        role_perms = [self.roles[r].permissions for r in member.role_ids if r in self.roles]
        base = base_permissions(self.everyone.permissions, role_perms, owner=user_id == self.owner_id)
        if channel is None:
            return base
        thread = channel if channel.is_thread else None
        if thread is not None:
            parent = self.channels.get(thread.parent_id or 0)
            if parent is None:
                return 0
            channel = parent
        perms = apply_overwrites(
            base, channel.overwrites, guild_id=self.id, role_ids=member.role_ids, member_id=user_id
        )
        if perms == ALL_PERMISSIONS:
            return perms
        if thread is not None and thread.type == PRIVATE_THREAD:
            if user_id not in thread.member_ids and not perms & MANAGE_THREADS:
                return 0
        return implicit(perms, send_bit=SEND_MESSAGES_IN_THREADS if thread else SEND_MESSAGES)


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
    mention_everyone: bool = False  # @everyone/@here that actually pinged (allowed and permitted)
    mentions: list[int] = field(default_factory=list)  # ids of the users the message actually pinged
    tts: bool = False

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
