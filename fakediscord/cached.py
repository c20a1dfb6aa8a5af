"""What the real discord.py client has cached, looked up with a clear failure instead of ``None``.

discord.py's getters answer ``None`` (or any channel type) for an id it does not know; a test that expects
the object to be there asserts it here, which also gives the type checker the narrowed type."""

from __future__ import annotations

import discord


def guild_of(client: discord.Client, guild_id: int) -> discord.Guild:
    guild = client.get_guild(guild_id)
    assert guild is not None, f"the client has no guild {guild_id}"
    return guild


def text_channel_of(client: discord.Client, channel_id: int) -> discord.TextChannel:
    channel = client.get_channel(channel_id)
    assert isinstance(channel, discord.TextChannel), f"channel {channel_id} is {channel!r}"
    return channel


def thread_of(client: discord.Client, guild_id: int, thread_id: int) -> discord.Thread:
    thread = guild_of(client, guild_id).get_thread(thread_id)
    assert thread is not None, f"the client has no thread {thread_id}"
    return thread
