"""Pictures are made in servers only (README: Direct messages): /imagine is registered for guilds only,
a button on an old result in a DM refuses, and a 🔄 reaction that admission refuses (a ban, a quota)
answers the member privately, once per cooldown, never in the channel."""

from __future__ import annotations

import sqlite3

from bot.cogs.imagine._submit import GUILD_ONLY
from fakediscord.permissions import MANAGE_GUILD
from tests.bot.answers import settled

REROLL = "🔄"


def _world(fake):
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    people = [fake.add_user(name) for name in ("alice", "bob", "carol")]
    for user in people:
        fake.add_member(guild, user)
    return guild, channel, *people


def _is_result(m) -> bool:
    return "seed" in m.content and any(a.filename.endswith(".png") for a in m.attachments)


async def _result_of(fake, inter):
    return await fake.wait_for_message(lambda m: m.interaction_id == inter.id and _is_result(m), timeout=120)


def _jobs(tmp_path) -> int:
    return sqlite3.connect(tmp_path / "bot.db").execute("select count(*) from jobs").fetchone()[0]


async def test_imagine_is_registered_for_servers_only(fake_discord, make_settings, run_bot):
    fake = fake_discord
    _world(fake)
    async with run_bot(make_settings()):  # no GUILD_IDS: global commands, which DMs could otherwise see
        imagine = next(c for c in fake.commands_for(None) if c["name"] == "imagine")
        assert imagine.get("contexts") == [0] or imagine.get("dm_permission") is False


async def test_a_button_in_a_dm_refuses(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, _, _ = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        inter = await fake.invoke("imagine", {"prompt": "a lantern", "count": 1},
                                  guild=guild, channel=channel, user=alice)  # fmt: skip
        result = await fake.wait_for_message(
            lambda m: m.interaction_id == inter.id and _is_result(m), timeout=120
        )
        # A result an older release posted in Alice's DMs: same buttons, no guild.
        dm = fake.dm_channel(alice)
        old = fake.create_message(
            dm, fake.bot_user, {"content": result.content, "components": result.components}, []
        )
        upscale = next(b["custom_id"] for b in old.buttons() if b.get("label") == "U1")
        click = await fake.click(old, upscale, user=alice)
        await click.wait_response()
        assert click.ephemeral and GUILD_ONLY in click.callbacks[0]["data"]["content"]
        assert _jobs(tmp_path) == 1  # nothing was queued


async def test_a_refused_reaction_answers_privately_once(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, bob, carol = _world(fake)
    admin = fake.add_user("admin")
    fake.add_member(guild, admin, permissions=MANAGE_GUILD)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        inter = await fake.invoke("imagine", {"prompt": "a lighthouse", "count": 1},
                                  guild=guild, channel=channel, user=alice)  # fmt: skip
        result = await fake.wait_for_message(
            lambda m: m.interaction_id == inter.id and _is_result(m), timeout=120
        )
        ban = await fake.invoke("ban", {"user": bob, "reason": "flooding the gallery"},
                                guild=guild, channel=channel, user=admin)  # fmt: skip
        await settled(fake, ban)  # acknowledged first; the ban is saved before its answer

        for _ in range(3):  # toggling the reaction
            await fake.react(result, REROLL, user=bob)
            await fake.unreact(result, REROLL, user=bob)
        # What follows: Carol's reaction after Bob's is answered with a rerolled result.
        await fake.react(result, REROLL, user=carol)
        await fake.wait_for_message(
            lambda m: _is_result(m) and f"<@{carol.id}>" in m.content and m.id != result.id, timeout=120
        )

    dm = fake.dm_channel(bob)
    to_bob = [m.content for m in fake.messages if m.channel_id == dm.id]
    assert len(to_bob) == 1 and "flooding the gallery" in to_bob[0]
    public = [m.content for m in fake.messages if m.channel_id == channel.id]
    assert not any("flooding" in text for text in public)
    assert _jobs(tmp_path) == 2  # Alice's and Carol's
