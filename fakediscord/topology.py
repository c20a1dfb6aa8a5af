"""Changes to a guild's shape after it is built: forums, threads and forum posts, permission overwrites,
role permissions, and deleting channels or the whole guild (as Discord dispatches them to the bot).

A mixin of :class:`~fakediscord.state.World`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .models import (
    GUILD_FORUM,
    GUILD_TEXT,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)
from .permissions import MEMBER_OVERWRITE, ROLE_OVERWRITE, Overwrite


class Topology:
    """Needs from the world: ids, the guild/channel stores, add_channel, create_message, _emit/_changed."""

    guilds: dict[int, FakeGuild]
    channels: dict[int, FakeChannel]
    users: dict[int, FakeUser]
    snowflake: Callable[[], int]
    add_channel: Callable[..., FakeChannel]
    create_message: Callable[..., FakeMessage]
    _emit: Callable[..., None]
    _changed: Callable[[], None]

    # ------------------------------------------------------------------------------ forums, threads
    def add_forum(self, guild: FakeGuild, name: str = "gallery") -> FakeChannel:
        """A forum channel (type 15): it holds only threads (posts); messages go into the posts."""
        return self.add_channel(guild, name, type=GUILD_FORUM)

    def add_thread(
        self,
        parent: FakeChannel,
        name: str = "thread",
        *,
        private: bool = False,
        owner: FakeUser | None = None,
        members: tuple[FakeUser, ...] | list[FakeUser] = (),
        archived: bool = False,
        locked: bool = False,
        thread_id: int | None = None,
    ) -> FakeChannel:
        """A public (11) or private (12) thread under ``parent`` (THREAD_CREATE). A private thread is
        visible only to its ``members`` (the owner, by default the guild owner, is one) and to those
        with MANAGE_THREADS."""
        if parent.guild_id is None or parent.is_thread:
            raise ValueError("threads live under a guild text or forum channel")
        if private and parent.type != GUILD_TEXT:
            raise ValueError("private threads only exist in text channels")
        guild = self.guilds[parent.guild_id]
        owner = owner or self.users[guild.owner_id]  # every thread has a starter (discord.py needs one)
        thread = FakeChannel(
            thread_id or self.snowflake(),
            guild.id,
            name,
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            parent.nsfw,
            parent_id=parent.id,
            owner_id=owner.id,
            archived=archived,
            locked=locked,
        )
        thread.member_ids = {owner.id, *(u.id for u in members)}
        guild.channels[thread.id] = thread
        self.channels[thread.id] = thread
        self._emit("THREAD_CREATE", {**thread.to_json(), "newly_created": True})
        self._changed()
        return thread

    def add_forum_post(
        self, forum: FakeChannel, name: str, content: str, *, user: FakeUser, **payload: Any
    ) -> tuple[FakeChannel, FakeMessage]:
        """``user`` opens a post in ``forum``: a public thread whose starter message has the thread's id."""
        if forum.type != GUILD_FORUM:
            raise ValueError(f"#{forum.name} is not a forum channel")
        thread = self.add_thread(forum, name, owner=user)
        starter = self.create_message(thread, user, {"content": content, **payload}, [], message_id=thread.id)
        return thread, starter

    def archive_thread(self, thread: FakeChannel, *, archived: bool = True, locked: bool = False) -> None:
        """Archive (or unarchive) a thread: THREAD_UPDATE. Bots cannot post in an archived thread."""
        if not thread.is_thread:
            raise ValueError(f"#{thread.name} is not a thread")
        thread.archived, thread.locked = archived, locked
        self._emit("THREAD_UPDATE", thread.to_json())
        self._changed()

    def add_thread_member(self, thread: FakeChannel, user: FakeUser) -> None:
        """``user`` joins ``thread`` (what makes a private thread visible to them)."""
        thread.member_ids.add(user.id)
        self._changed()

    # ---------------------------------------------------------------------------------- permissions
    def set_overwrite(
        self,
        channel: FakeChannel,
        target: FakeRole | FakeUser | FakeMember,
        *,
        allow: int = 0,
        deny: int = 0,
    ) -> None:
        """Set ``channel``'s overwrite for a role (``guild.everyone`` for @everyone) or a member:
        CHANNEL_UPDATE. Threads take their parent's overwrites. ``allow=deny=0`` removes it."""
        if channel.guild_id is None or channel.is_thread:
            raise ValueError("overwrites live on guild text or forum channels (threads use their parent's)")
        kind = ROLE_OVERWRITE if isinstance(target, FakeRole) else MEMBER_OVERWRITE
        if allow or deny:
            channel.overwrites[target.id] = Overwrite(target.id, kind, allow, deny)
        else:
            channel.overwrites.pop(target.id, None)
        self._emit("CHANNEL_UPDATE", channel.to_json())
        self._changed()

    def set_role_permissions(self, role: FakeRole, permissions: int) -> None:
        """Change a role's guild-wide permissions (GUILD_ROLE_UPDATE)."""
        role.permissions = permissions
        self._emit("GUILD_ROLE_UPDATE", {"guild_id": str(role.guild_id), "role": role.to_json()})
        self._changed()

    def permissions_in(self, channel: FakeChannel, user: FakeUser) -> int:
        """``user``'s permissions in ``channel``, overwrites included (what Discord enforces)."""
        if channel.guild_id is None:
            return 0
        return self.guilds[channel.guild_id].permissions_for(user.id, channel)

    # ------------------------------------------------------------------------------------- removal
    def delete_channel(self, channel: FakeChannel) -> None:
        """Delete a channel (with its threads) or a thread: CHANNEL_DELETE / THREAD_DELETE. REST calls
        to it then answer 404 10003 Unknown Channel."""
        guild = self.guilds.get(channel.guild_id or 0)
        gone = [channel] + [c for c in self.channels.values() if c.parent_id == channel.id]
        for each in gone:
            self.channels.pop(each.id, None)
            if guild is not None:
                guild.channels.pop(each.id, None)
        if channel.is_thread:
            thread_event = {
                "id": str(channel.id),
                "guild_id": str(channel.guild_id),
                "parent_id": str(channel.parent_id),
                "type": channel.type,
            }
            self._emit("THREAD_DELETE", thread_event)
        else:
            self._emit("CHANNEL_DELETE", channel.to_json())
        self._changed()

    def remove_guild(self, guild: FakeGuild) -> None:
        """The bot leaves (is kicked from, or loses) ``guild``: GUILD_DELETE without ``unavailable``, so
        discord.py fires ``on_guild_remove``. Its channels are gone: REST to them answers 10003."""
        self.guilds.pop(guild.id, None)
        for channel_id in list(guild.channels):
            self.channels.pop(channel_id, None)
        self._emit("GUILD_DELETE", {"id": str(guild.id)})
        self._changed()
