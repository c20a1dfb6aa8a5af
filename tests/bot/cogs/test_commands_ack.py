"""Every command acknowledges before its database work, and autocompletes answer within Discord's 3 s
even when the database is slow. The store is held at a barrier (the real store, released by the test),
so each test shows the order of events, not a timing: before the fix, the answer waited on the store."""

from __future__ import annotations

import asyncio

import pytest

from fakediscord.plugin import make_world
from tests.bot.answers import answer, settled
from tests.bot.jobs.scripted import ScriptedTransport, scripted_bot, scripted_settings


@pytest.fixture
def world(fake_discord):
    return make_world(fake_discord)


def hold(obj, name):
    """Make ``obj.name`` wait at a barrier before doing its real work; returns the barrier."""
    real = getattr(obj, name)
    gate = asyncio.Event()

    async def held(*args, **kwargs):
        await gate.wait()
        return await real(*args, **kwargs)

    setattr(obj, name, held)
    return gate


@pytest.mark.parametrize(
    ("command", "options", "store", "method", "public"),
    [
        ("usage", {}, "usage", "user_usage", False),
        ("stats", {}, "usage", "guild_stats", True),
        ("blocklist list", {}, "moderation", "terms", False),
        ("limits history", {}, "moderation", "audit_log", False),
    ],
)
async def test_commands_acknowledge_before_the_database(
    world, tmp_path, command, options, store, method, public
):
    settings = scripted_settings(world.fake, tmp_path, GUILD_IDS=world.guild.id)
    async with scripted_bot(world.fake, settings, ScriptedTransport()) as bot:
        target = bot.usage if store == "usage" else bot.admission.store
        gate = hold(target, method)
        group, _, sub = command.partition(" ")
        inter = await world.fake.invoke(
            group, options, guild=world.guild, channel=world.channel, user=world.admin, subcommand=sub or None
        )
        await inter.wait_response(timeout=10)  # answered while the store is still held
        assert inter.deferred and inter.ephemeral is not public
        gate.set()
        await settled(world.fake, inter)
        assert answer(inter) and "went wrong" not in answer(inter)


async def test_a_slow_database_gives_an_empty_autocomplete_in_time(world, tmp_path):
    settings = scripted_settings(world.fake, tmp_path, GUILD_IDS=world.guild.id)
    async with scripted_bot(world.fake, settings, ScriptedTransport()) as bot:
        hold(bot.admission.store, "terms")  # never released
        choices = await world.fake.autocomplete(
            "blocklist", "term", "go", guild=world.guild, channel=world.channel, user=world.admin,
            subcommand="remove",
        )  # fmt: skip
        await choices.wait_response(timeout=10)
        assert not choices.late and choices.autocomplete_choices == []
