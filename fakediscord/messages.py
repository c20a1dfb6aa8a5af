"""Message rules of the fake Discord: validation, create/edit/delete, reactions, message JSON.

A mixin of :class:`~fakediscord.state.World` (it uses the world's users, guilds, ids and ``_emit``).
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .models import (
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    MAX_CONTENT,
    MAX_EMBEDS,
    MAX_FILES,
    MAX_REACTIONS,
    ApiError,
    FakeAttachment,
    FakeChannel,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    Upload,
    as_int,
    emoji_json,
    invalid_form,
    iso_now,
    walk_components,
)
from .permissions import ALL_PERMISSIONS, MENTION_EVERYONE, SEND_TTS_MESSAGES, USE_EXTERNAL_EMOJIS

# A custom emoji in content; the fake's guilds have no emojis of their own, so every one is external.
CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)\b")
USER_MENTION = re.compile(r"<@!?(\d{1,20})>")


class MessageRules:
    """Needs from the world: ids, users, guilds, the message and attachment stores, and _emit/_changed."""

    attachment_size_limit: int
    bot_user: FakeUser
    users: dict[int, FakeUser]
    guilds: dict[int, Any]
    messages: list[FakeMessage]
    _messages_by_id: dict[int, FakeMessage]
    attachments: dict[int, FakeAttachment]
    application_id: int
    if TYPE_CHECKING:  # read-only: a property of the fake that mixes this in

        @property
        def http_base(self) -> str: ...

    snowflake: Callable[[], int]
    get_message: Callable[[int], FakeMessage | None]
    _emit: Callable[..., None]
    _changed: Callable[[], None]

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
            "tts": msg.tts,
            "mention_everyone": msg.mention_everyone,
            "mentions": [self.users[u].to_json() for u in msg.mentions if u in self.users],
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
                data["referenced_message"] = (
                    self.message_json(ref, with_reference=False)
                    if ref is not None and not ref.deleted
                    else None
                )
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
        perms: int = ALL_PERMISSIONS,
        message_id: int | None = None,
    ) -> FakeMessage:
        """``perms``: the author's permissions in the channel; they decide whether @everyone pings, TTS
        applies and external emojis stay emojis (Discord degrades the message; no error).
        ``message_id``: a forum post's starter message shares its thread's id."""
        self.validate_message(payload, uploads, creating=not extra_flags & FLAG_LOADING)
        msg = FakeMessage(
            id=message_id or self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author_id=author.id,
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=self.new_attachments(payload, uploads),
            flags=((payload.get("flags") or 0) & (FLAG_EPHEMERAL | FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2))
            | extra_flags,
            type=msg_type,
        )
        self._apply_content(msg, payload, perms)
        msg.tts = bool(payload.get("tts") and perms & SEND_TTS_MESSAGES)
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

    def edit_message(
        self,
        msg: FakeMessage,
        payload: dict[str, Any],
        uploads: list[Upload],
        *,
        perms: int = ALL_PERMISSIONS,
    ) -> None:
        self.validate_message(payload, uploads, creating=False)
        if "content" in payload:
            self._apply_content(msg, payload, perms)
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

    @staticmethod
    def _apply_content(msg: FakeMessage, payload: dict[str, Any], perms: int) -> None:
        """Content as Discord stores it: without USE_EXTERNAL_EMOJIS a custom emoji turns into its
        ``:name:`` text; @everyone/@here pings only when allowed_mentions parses it and the author holds
        MENTION_EVERYONE."""
        content = payload.get("content") or ""
        if not perms & USE_EXTERNAL_EMOJIS:
            content = CUSTOM_EMOJI.sub(r":\1:", content)
        allowed = payload.get("allowed_mentions")
        parses_everyone = allowed is None or "everyone" in (allowed.get("parse") or [])
        msg.content = content
        msg.mention_everyone = bool(
            EVERYONE_MENTION.search(content) and parses_everyone and perms & MENTION_EVERYONE
        )
        # A user mention pings when allowed_mentions parses users or lists that user (Discord's rules).
        listed = {int(u) for u in (allowed or {}).get("users") or []}
        parses_users = allowed is None or "users" in (allowed.get("parse") or [])
        msg.mentions = [
            uid for uid in map(int, USER_MENTION.findall(content)) if parses_users or uid in listed
        ]

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
