"""A loopback Discord (gateway + REST) that the real discord.py client logs into, for end-to-end tests
and benchmarks: a development package that tests/ and bench/ both import (its own tests are in
tests/fakediscord).

See plugin.py for the pytest fixtures (fake_discord, discord_world, discord_client). Knobs on the running
``fake_discord`` (all changeable mid-test):

- Latency: ``fake.latency.rest = 0.2`` (every REST call), ``fake.latency.cdn = 3.5`` (attachment
  downloads), per route class ``fake.latency.interactions / webhooks / messages / reactions / threads /
  channels / guilds / commands / users`` (None = use ``rest``).
- Discord's deadlines, measured by the server when a request arrives (latency included): an interaction
  not called back within ``fake.interaction_deadline`` (3 s) is dead (10062); its token lives
  ``fake.token_lifetime`` (15 min, or ``fake.expire_token(inter)``), then 401 50027.
- Permissions: ``fake.set_overwrite(channel, role | guild.everyone | user, allow=, deny=)``,
  ``fake.set_role_permissions(role, bits)``, ``fake.permissions_in(channel, user)``. Channel routes need
  the bot's channel permissions (replies also READ_MESSAGE_HISTORY: 403 50013); interaction responses,
  edits and followups never need SEND_MESSAGES/ATTACH_FILES/EMBED_LINKS but @everyone, TTS and external
  emojis follow the bot's channel permissions (Discord's documented behaviour).
- Threads and forums: ``fake.add_thread(parent, name, private=, owner=, members=)``,
  ``fake.add_thread_member``, ``fake.archive_thread`` (then bot posts get 400 50083),
  ``fake.add_forum(guild, name)``, ``fake.add_forum_post(forum, name, content, user=)``.
- Removal: ``fake.delete_channel(channel)`` (CHANNEL_DELETE / THREAD_DELETE), ``fake.remove_guild(guild)``
  (GUILD_DELETE); REST to what is gone answers 404 10003 Unknown Channel.
- History: GET messages honours ``before`` / ``after`` (the oldest after the id) / ``around``.
- Rate limits: ``X-RateLimit-*`` headers on every REST answer; ``fake.rate_limits.set("POST
  /channels/{channel_id}/messages", limit=5, per=5.0)`` gives a route its own bucket (per channel /
  guild / token), 429 + ``retry_after`` beyond it. ``fake.invalid_requests.count`` / ``.log``: every
  401/403/429 answer; past ``fake.invalid_requests.limit`` (10,000 per 10 min) the client is banned.
- Faults: ``fake.fail_next(method, path_regex, status=...)`` (the next N requests),
  ``fake.faults.outage(method, path_regex, status=503)`` (every one until ``.end()``; faults.py),
  ``fake.disconnect_bots()``.
"""

from .permissions import (
    ADD_REACTIONS,
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    CREATE_PRIVATE_THREADS,
    CREATE_PUBLIC_THREADS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    EMBED_LINKS,
    MANAGE_CHANNELS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MANAGE_THREADS,
    MENTION_EVERYONE,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    SEND_TTS_MESSAGES,
    USE_APPLICATION_COMMANDS,
    USE_EXTERNAL_EMOJIS,
    VIEW_CHANNEL,
)
from .server import FakeDiscord
from .state import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    ApiError,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)

__all__ = [
    "ADD_REACTIONS",
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "ATTACH_FILES",
    "CREATE_PRIVATE_THREADS",
    "CREATE_PUBLIC_THREADS",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "EMBED_LINKS",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "MANAGE_CHANNELS",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "MANAGE_THREADS",
    "MENTION_EVERYONE",
    "READ_MESSAGE_HISTORY",
    "SEND_MESSAGES",
    "SEND_MESSAGES_IN_THREADS",
    "SEND_TTS_MESSAGES",
    "USE_APPLICATION_COMMANDS",
    "USE_EXTERNAL_EMOJIS",
    "VIEW_CHANNEL",
    "ApiError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
]
