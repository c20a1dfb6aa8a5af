"""Permission bits and Discord's permission arithmetic (guild roles, then channel overwrites).

https://discord.com/developers/docs/topics/permissions - only the bits the fake or a test is likely to
name are spelled out; any int works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
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
    | CREATE_PUBLIC_THREADS
    | CREATE_PRIVATE_THREADS
    | SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Lost implicitly without the right to send at all (Discord's "implicit permissions").
SEND_DEPENDENT = MENTION_EVERYONE | SEND_TTS_MESSAGES | ATTACH_FILES | EMBED_LINKS

# Interaction responses and followups are webhooks: they need neither VIEW_CHANNEL nor SEND_MESSAGES, and
# may always attach files and embed links. Only these follow the bot's channel permissions (changelog
# 2022-06-29 "Changes to Bot Permissions for Interactions and Webhooks"; edits and followups too since
# 2023-11-01 "Fix Message Edit Interaction Response Permissions").
INTERACTION_SCOPED = MENTION_EVERYONE | SEND_TTS_MESSAGES | USE_EXTERNAL_EMOJIS

ROLE_OVERWRITE = 0
MEMBER_OVERWRITE = 1


@dataclass(eq=False)
class Overwrite:
    """One channel permission overwrite: a role's (type 0) or a member's (type 1) allow/deny bits."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


def base_permissions(everyone: int, role_perms: Iterable[int], *, owner: bool) -> int:
    """Guild-level permissions: @everyone OR the member's roles; the owner and ADMINISTRATOR get all."""
    if owner:
        return ALL_PERMISSIONS
    perms = everyone
    for bits in role_perms:
        perms |= bits
    return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms


def apply_overwrites(
    base: int,
    overwrites: Mapping[int, Overwrite],
    *,
    guild_id: int,
    role_ids: Iterable[int],
    member_id: int,
) -> int:
    """Discord's order: @everyone's overwrite, then all the member's role overwrites together (deny
    first, then allow), then the member's own overwrite. ADMINISTRATOR bypasses overwrites."""
    if base & ADMINISTRATOR:
        return ALL_PERMISSIONS
    perms = base
    everyone = overwrites.get(guild_id)
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in role_ids:
        ow = overwrites.get(role_id)
        if ow is not None and ow.type == ROLE_OVERWRITE:
            allow |= ow.allow
            deny |= ow.deny
    perms = (perms & ~deny) | allow
    own = overwrites.get(member_id)
    if own is not None and own.type == MEMBER_OVERWRITE:
        perms = (perms & ~own.deny) | own.allow
    return perms


def implicit(perms: int, *, send_bit: int) -> int:
    """Without VIEW_CHANNEL nothing in the channel is allowed; without the right to send, neither are
    mentions of everyone, TTS, files or embeds."""
    if not perms & VIEW_CHANNEL:
        return 0
    if not perms & send_bit:
        perms &= ~SEND_DEPENDENT
    return perms
