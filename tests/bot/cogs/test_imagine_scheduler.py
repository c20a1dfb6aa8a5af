"""Schedule type and clip skip through the loopback Discord and the tiny model: the flags land on the job,
🔄 keeps them, and a misspelt name is refused privately with the nearest one."""

from __future__ import annotations

import sqlite3

from tests.bot.answers import refusal, settled

REROLL = "🔄"


def _has_picture(m) -> bool:
    return "seed" in m.content and any(a.filename.endswith(".png") for a in m.attachments)


async def test_scheduler_and_clip_skip_flags_reach_the_job_and_a_reroll(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        bad = await fake.invoke(
            "imagine", {"prompt": "x --scheduler karas"}, guild=guild, channel=channel, user=alice
        )
        await settled(fake, bad)
        text = refusal(bad) or ""
        assert bad.ephemeral and "Unknown schedule type `karas`; did you mean `Karras`?" in text
        pair = await fake.invoke(
            "imagine",
            {"prompt": "x --sampler DDIM --schedule Karras"},
            guild=guild,
            channel=channel,
            user=alice,
        )
        await settled(fake, pair)
        assert "`DDIM` runs its own timesteps" in (refusal(pair) or "")

        inter = await fake.invoke(
            "imagine",
            {"prompt": "x --scheduler karras --clip-skip 2", "sampler": "Euler", "count": 1},
            guild=guild,
            channel=channel,
            user=alice,
        )
        result = await fake.wait_for_message(
            lambda m: m.interaction_id == inter.id and _has_picture(m), timeout=120
        )
        assert "Euler Karras · 2 steps" in result.content and "clip skip 2" in result.content
        reroll = next(b for b in result.buttons() if (b.get("emoji") or {}).get("name") == REROLL)
        again = await fake.click(result, reroll["custom_id"], user=alice)
        await fake.wait_for_message(lambda m: m.interaction_id == again.id and _has_picture(m), timeout=120)
    rows = (
        sqlite3.connect(tmp_path / "bot.db")
        .execute("select prompt, sampler, scheduler, clip_skip from jobs order by created_at")
        .fetchall()
    )
    assert rows == [("x", "Euler", "Karras", 2)] * 2  # the refused ones left no row
