"""Thread and forum routes the bot calls: start a thread (alone, from a message, or a forum post with its
starter message), archive/lock/rename it, join it, delete a channel or thread.

A mixin of :class:`~fakediscord.server.FakeDiscord` (uses ChannelRoutes' helpers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from .models import (
    GUILD_FORUM,
    GUILD_TEXT,
    PRIVATE_THREAD,
    ApiError,
    FakeChannel,
    FakeMessage,
    FakeUser,
    Upload,
    invalid_form,
)
from .permissions import (
    ATTACH_FILES,
    CREATE_PRIVATE_THREADS,
    CREATE_PUBLIC_THREADS,
    MANAGE_CHANNELS,
    MANAGE_THREADS,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
)
from .wire import json_response, no_content, read_body

Adder = Callable[[str, str, Callable[..., Any], str], None]


class ThreadRoutes:
    """Needs from the fake: the world, its topology and message rules, and ChannelRoutes' helpers."""

    bot_user: FakeUser
    channels: dict[int, FakeChannel]
    add_thread: Callable[..., FakeChannel]
    archive_thread: Callable[..., None]
    add_thread_member: Callable[[FakeChannel, FakeUser], None]
    delete_channel: Callable[[FakeChannel], None]
    create_message: Callable[..., FakeMessage]
    message_json: Callable[..., dict[str, Any]]
    validate_message: Callable[..., None]
    _channel: Callable[[web.Request], FakeChannel]
    _channel_message: Callable[[web.Request, FakeChannel], FakeMessage]
    _require: Callable[[FakeChannel, int], int]
    _emit: Callable[..., None]
    _changed: Callable[[], None]

    def _thread_routes(self, add: Adder) -> None:
        ch = "/channels/{channel_id}"
        add("POST", f"{ch}/threads", self._start_thread, "threads")
        add("POST", f"{ch}/messages/{{message_id}}/threads", self._thread_from_message, "threads")
        add("PATCH", ch, self._patch_channel, "channels")
        add("DELETE", ch, self._delete_channel, "channels")
        add("PUT", f"{ch}/thread-members/@me", self._join_thread, "threads")

    async def _start_thread(self, request: web.Request) -> web.Response:
        """A thread without a starter message in a text channel, or a forum post (``message`` required)."""
        parent = self._channel(request)
        body, uploads = await read_body(request)
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise invalid_form("name", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH")
        if parent.type == GUILD_FORUM:
            message = body.get("message")
            if not isinstance(message, dict):
                raise invalid_form("message", "A forum post needs a starter message.", "BASE_TYPE_REQUIRED")
            perms = self._require(parent, VIEW_CHANNEL | SEND_MESSAGES | (ATTACH_FILES if uploads else 0))
            return self._forum_post(parent, name, message, uploads, perms)
        if parent.type != GUILD_TEXT:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        private = body.get("type") == PRIVATE_THREAD
        self._require(parent, VIEW_CHANNEL | (CREATE_PRIVATE_THREADS if private else CREATE_PUBLIC_THREADS))
        thread = self.add_thread(parent, name, private=private, owner=self.bot_user)
        return json_response(thread.to_json())

    def _forum_post(
        self, forum: FakeChannel, name: str, message: dict[str, Any], uploads: list[Upload], perms: int
    ) -> web.Response:
        self.validate_message(message, uploads, creating=True)  # nothing half-made if the message is bad
        thread = self.add_thread(forum, name, owner=self.bot_user)
        starter = self.create_message(
            thread, self.bot_user, message, uploads, perms=perms, message_id=thread.id
        )
        return json_response({**thread.to_json(), "message": self.message_json(starter)})

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        parent = self._channel(request)
        msg = self._channel_message(request, parent)
        if parent.type != GUILD_TEXT:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        if msg.id in self.channels:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        self._require(parent, VIEW_CHANNEL | CREATE_PUBLIC_THREADS)
        body, _ = await read_body(request)
        name = str(body.get("name") or "thread")
        thread = self.add_thread(parent, name, owner=self.bot_user, thread_id=msg.id)
        return json_response(thread.to_json())

    async def _patch_channel(self, request: web.Request) -> web.Response:
        """Threads: archive/unarchive, lock, rename. Other channels: rename (MANAGE_CHANNELS)."""
        channel = self._channel(request)
        body, _ = await read_body(request)
        if not channel.is_thread:
            self._require(channel, MANAGE_CHANNELS)
            if body.get("name"):
                channel.name = str(body["name"])
            self._emit("CHANNEL_UPDATE", channel.to_json())
            self._changed()
            return json_response(channel.to_json())
        perms = self._require(channel, VIEW_CHANNEL)
        moderator = bool(perms & MANAGE_THREADS)
        locked = bool(body.get("locked", channel.locked))
        archived = bool(body.get("archived", channel.archived))
        if (locked != channel.locked or channel.locked) and not moderator:
            raise ApiError(403, 50013, "Missing Permissions")  # locking, or touching a locked thread
        if not moderator and channel.owner_id != self.bot_user.id and "name" in body:
            raise ApiError(403, 50013, "Missing Permissions")
        if not archived and channel.archived and not perms & SEND_MESSAGES_IN_THREADS:
            raise ApiError(403, 50013, "Missing Permissions")
        if body.get("name"):
            channel.name = str(body["name"])
        self.archive_thread(channel, archived=archived, locked=locked)
        return json_response(channel.to_json())

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, MANAGE_THREADS if channel.is_thread else MANAGE_CHANNELS)
        data = channel.to_json()
        self.delete_channel(channel)
        return json_response(data)

    async def _join_thread(self, request: web.Request) -> web.Response:
        thread = self._channel(request)  # a private thread the bot may not see is already 403 here
        if not thread.is_thread:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        if thread.archived:
            raise ApiError(400, 50083, "Thread is archived")
        self.add_thread_member(thread, self.bot_user)
        return no_content()
