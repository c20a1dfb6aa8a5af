"""Channel routes the bot calls with its token: messages (history, send, edit, delete) and reactions.

Every check uses the bot's permissions in that channel, overwrites included (threads: the parent's, with
SEND_MESSAGES_IN_THREADS instead of SEND_MESSAGES). A deleted channel is 404 10003; an archived thread
refuses changes with 400 50083; a forum takes no messages of its own (400 50008). A mixin of
:class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .models import (
    FLAG_EPHEMERAL,
    GUILD_FORUM,
    ApiError,
    FakeChannel,
    FakeGuild,
    FakeMessage,
    FakeUser,
    as_int,
    invalid_form,
)
from .permissions import (
    ADD_REACTIONS,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
)
from .wire import json_response, no_content, read_body

Adder = Callable[[str, str, Callable[..., Any], str], None]


class ChannelRoutes:
    """Needs from the fake: the world and its message rules."""

    bot_user: FakeUser
    users: dict[int, FakeUser]
    guilds: dict[int, FakeGuild]
    channels: dict[int, FakeChannel]
    get_message: Callable[[int], FakeMessage | None]
    channel_messages: Callable[[FakeChannel], list[FakeMessage]]
    create_message: Callable[..., FakeMessage]
    edit_message: Callable[..., None]
    delete_message: Callable[[FakeMessage], None]
    add_reaction: Callable[[FakeMessage, str, FakeUser], None]
    remove_reaction: Callable[[FakeMessage, str, FakeUser], None]
    message_json: Callable[..., dict[str, Any]]

    def _channel_routes(self, add: Adder) -> None:
        ch = "/channels/{channel_id}"
        add("GET", ch, self._get_channel, "channels")
        add("GET", f"{ch}/messages", self._list_messages, "messages")
        add("POST", f"{ch}/messages", self._post_message, "messages")
        add("GET", f"{ch}/messages/{{message_id}}", self._get_message, "messages")
        add("PATCH", f"{ch}/messages/{{message_id}}", self._patch_message, "messages")
        add("DELETE", f"{ch}/messages/{{message_id}}", self._delete_message, "messages")
        reaction = f"{ch}/messages/{{message_id}}/reactions/{{emoji}}"
        add("PUT", f"{reaction}/@me", self._put_reaction, "reactions")
        add("DELETE", f"{reaction}/{{user}}", self._delete_reaction, "reactions")
        add("GET", reaction, self._list_reaction_users, "reactions")

    # ------------------------------------------------------------------------------------- helpers
    def _channel(self, request: web.Request) -> FakeChannel:
        channel = self.channels.get(as_int(request.match_info["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        if channel.guild_id is not None and not self._bot_perms(channel) & VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        return channel

    def _channel_message(self, request: web.Request, channel: FakeChannel) -> FakeMessage:
        # Ephemeral messages are invisible to channel routes, as on Discord.
        msg = self.get_message(as_int(request.match_info["message_id"]))
        if msg is None or msg.deleted or msg.ephemeral or msg.channel_id != channel.id:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _bot_perms(self, channel: FakeChannel) -> int:
        if channel.guild_id is None:
            return ALL_PERMISSIONS
        return self.guilds[channel.guild_id].permissions_for(self.bot_user.id, channel)

    def _require(self, channel: FakeChannel, perms: int) -> int:
        """The bot's permissions in ``channel`` (403 50013 unless all of ``perms`` are among them)."""
        have = self._bot_perms(channel)
        if have & perms != perms:
            raise ApiError(403, 50013, "Missing Permissions")
        return have

    @staticmethod
    def _send_bit(channel: FakeChannel) -> int:
        return SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES

    @staticmethod
    def _writable(channel: FakeChannel) -> None:
        if channel.is_thread and channel.archived:
            raise ApiError(400, 50083, "Thread is archived")

    # -------------------------------------------------------------------------------------- routes
    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).to_json())

    async def _list_messages(self, request: web.Request) -> web.Response:
        """History like Discord: newest first; ``before``/``after``/``around`` pick the window (only the
        first of around, before, after counts). ``after`` gives the oldest ``limit`` messages after the id
        (still newest first: discord.py continues from the first element)."""
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        query = request.query
        try:
            limit = int(query.get("limit", 50))
        except ValueError:
            raise invalid_form("limit", "Value is not int.") from None
        if not 1 <= limit <= 100:
            raise invalid_form("limit", "int value should be between 1 and 100.", "NUMBER_TYPE_MAX")
        oldest_first = sorted(self.channel_messages(channel), key=lambda m: m.id)
        if "around" in query:
            pivot = as_int(query["around"])
            older = [m for m in oldest_first if m.id <= pivot][-(limit - limit // 2) :]
            newer = [m for m in oldest_first if m.id > pivot][: limit // 2]
            window = older + newer
        elif "before" in query:
            window = [m for m in oldest_first if m.id < as_int(query["before"])][-limit:]
        elif "after" in query:
            window = [m for m in oldest_first if m.id > as_int(query["after"])][:limit]
        else:
            window = oldest_first[-limit:]
        return json_response([self.message_json(m) for m in reversed(window)])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if channel.type == GUILD_FORUM:
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        payload, uploads = await read_body(request)
        needed = VIEW_CHANNEL | self._send_bit(channel) | (ATTACH_FILES if uploads else 0)
        if payload.get("message_reference"):
            needed |= READ_MESSAGE_HISTORY  # a reply reads the message it answers
        perms = self._require(channel, needed)
        self._writable(channel)
        if (payload.get("flags") or 0) & FLAG_EPHEMERAL:
            raise invalid_form("flags", "Only interaction responses can be ephemeral.")
        msg = self.create_message(channel, self.bot_user, payload, uploads, perms=perms)
        return json_response(self.message_json(msg))

    async def _get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        return json_response(self.message_json(self._channel_message(request, channel)))

    async def _patch_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        if msg.author_id != self.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        self._writable(channel)
        payload, uploads = await read_body(request)
        perms = self._require(channel, ATTACH_FILES if uploads else 0)
        self.edit_message(msg, payload, uploads, perms=perms)
        return json_response(self.message_json(msg))

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        if msg.author_id != self.bot_user.id:
            self._require(channel, MANAGE_MESSAGES)
        self._writable(channel)
        self.delete_message(msg)
        return no_content()

    async def _put_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY | ADD_REACTIONS)
        msg = self._channel_message(request, channel)
        self._writable(channel)
        self.add_reaction(msg, unquote(request.match_info["emoji"]), self.bot_user)
        return no_content()

    async def _delete_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        who = request.match_info["user"]
        user = self.bot_user if who == "@me" else self.users.get(as_int(who))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        if user is not self.bot_user:
            self._require(channel, MANAGE_MESSAGES)
        self._writable(channel)
        self.remove_reaction(msg, unquote(request.match_info["emoji"]), user)
        return no_content()

    async def _list_reaction_users(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        ids = sorted(msg.reactions.get(unquote(request.match_info["emoji"]), set()))
        return json_response([self.users[i].to_json() for i in ids])
