"""pytest plugin: a started fake Discord, a small standard world, and real discord.py clients logged into it.

Enable with ``pytest_plugins = ["fakediscord.plugin"]`` (tests/conftest.py does).

    async def test_x(fake_discord, discord_world, discord_client):
        async with discord_client(my_bot) as bot:
            inter = await fake_discord.invoke("ping", guild=discord_world.guild,
                                              channel=discord_world.channel, user=discord_world.member)
            await inter.wait_response()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import discord
import pytest_asyncio
import yarl
from discord.ext import commands

from .server import FakeDiscord
from .state import MANAGE_GUILD, FakeUser

# on_ready fires this long after the last GUILD_CREATE (discord.py's default is 2 s).
GUILD_READY_TIMEOUT = 0.05

SetupHook = Callable[[discord.Client], Awaitable[None] | None]


@contextlib.contextmanager
def pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and gateway URL at ``fake``; restore them afterwards.

    (The bot itself should also take these URLs from settings; this covers clients built in tests.)"""
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def connected_client(
    fake: FakeDiscord,
    client: discord.Client | None = None,
    *,
    intents: discord.Intents | None = None,
    setup: SetupHook | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
    token: str | None = None,
) -> AsyncIterator[Any]:
    """Start ``client`` (default: a fresh ``commands.Bot``) against ``fake``, wait for ``on_ready``,
    yield it, and close it on exit. ``setup(client)`` runs at the end of ``setup_hook`` (add cogs,
    ``add_view``, ``tree.sync()`` ...). ``token`` defaults to the fake's (another one fails login)."""
    if client is None:
        client = commands.Bot(
            command_prefix=commands.when_mentioned,
            intents=intents or discord.Intents.default(),
            guild_ready_timeout=GUILD_READY_TIMEOUT,
        )
    else:
        # Not public API, but the only knob after construction; keeps on_ready from waiting 2 s.
        client._connection.guild_ready_timeout = min(
            client._connection.guild_ready_timeout, GUILD_READY_TIMEOUT
        )
    if setup is not None:
        original_hook = client.setup_hook

        async def setup_hook() -> None:
            await original_hook()
            result = setup(client)
            if inspect.isawaitable(result):
                await result

        client.setup_hook = setup_hook  # type: ignore[method-assign]  # a per-instance hook: discord.py calls self.setup_hook()

    with pointed_at(fake):
        task = asyncio.create_task(client.start(token or fake.token), name="fakediscord-client")
        try:
            await _wait_ready(client, task, timeout)
            yield client
        finally:
            await client.close()
            # asyncio.wait rather than wait_for under suppress(CancelledError), which would also swallow the
            # cancellation of this block itself (the test's own task at the end of the run).
            _, pending = await asyncio.wait({task}, timeout=5)
            for left in pending:
                left.cancel()
            if not task.done():
                await asyncio.wait({task}, timeout=1)
            if task.done() and not task.cancelled():
                task.result()  # a client that failed raises here, as before


async def _wait_ready(client: discord.Client, task: asyncio.Task[None], limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not client.is_ready():
        if task.done():
            task.result()  # login failed: raise its error
            raise RuntimeError("discord client stopped before becoming ready")
        if loop.time() > deadline:
            raise TimeoutError(f"discord client not ready within {limit}s")
        await asyncio.sleep(0.01)


def make_world(fake: FakeDiscord) -> SimpleNamespace:
    """A guild with #general and an NSFW #art-nsfw, an owner, an admin (Manage Guild) and a plain member.
    ``world.new_member(name)`` adds another plain member."""
    owner = fake.add_user("owner")
    guild = fake.add_guild("Test Guild", owner=owner)
    channel = fake.add_channel(guild, "general")
    nsfw_channel = fake.add_channel(guild, "art-nsfw", nsfw=True)
    admin = fake.add_user("admin")
    fake.add_member(guild, admin, permissions=MANAGE_GUILD)
    member = fake.add_user("member")
    fake.add_member(guild, member)

    def new_member(username: str) -> FakeUser:
        user = fake.add_user(username)
        fake.add_member(guild, user)
        return user

    return SimpleNamespace(
        fake=fake,
        guild=guild,
        channel=channel,
        nsfw_channel=nsfw_channel,
        owner=owner,
        admin=admin,
        member=member,
        new_member=new_member,
    )


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started loopback Discord (stopped after the test; fails the test if the fake itself broke).

    Knobs, changeable mid-test (details in fakediscord/__init__.py):
    ``latency.rest`` / ``latency.cdn`` / ``latency.<route class>`` (seconds), ``interaction_deadline``
    (3 s, server-measured), ``token_lifetime`` / ``expire_token(inter)``, ``set_overwrite(channel,
    role|user, allow=, deny=)``, ``set_role_permissions``, ``permissions_in``, ``add_thread`` /
    ``add_thread_member`` / ``archive_thread``, ``add_forum`` / ``add_forum_post``, ``delete_channel``,
    ``remove_guild``, ``rate_limits.set(route, limit=, per=)``, ``invalid_requests.count`` / ``.log`` /
    ``.limit``, ``fail_next``, ``disconnect_bots``."""
    fake = FakeDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    assert not fake.internal_errors, f"the fake Discord itself failed: {fake.internal_errors}"


@pytest_asyncio.fixture
async def discord_server(fake_discord: FakeDiscord) -> FakeDiscord:
    """The same object as ``fake_discord``, under the name issue #11 uses (``discord_server.latency``)."""
    return fake_discord


@pytest_asyncio.fixture
async def discord_world(fake_discord: FakeDiscord) -> SimpleNamespace:
    return make_world(fake_discord)


@pytest_asyncio.fixture
async def discord_client(
    fake_discord: FakeDiscord,
) -> Callable[..., contextlib.AbstractAsyncContextManager[Any]]:
    """``async with discord_client(bot=None, *, intents=None, setup=None) as bot:`` - see connected_client."""
    return functools.partial(connected_client, fake_discord)
