"""The walking skeleton end to end: a typed /imagine through the real discord.py client, the JobManager,
an engine worker process running the tiny diffusers model, back to a PNG in the channel and rows in SQLite."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from engine.grids import GRID_GAP


def _world(fake):
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    user = fake.add_user("alice")
    fake.add_member(guild, user)
    return guild, channel, user


async def test_imagine_posts_a_grid_and_records_everything(fake_discord, make_settings, run_bot, tmp_path):
    guild, channel, alice = _world(fake_discord)
    settings = make_settings(GUILD_IDS=guild.id)
    async with run_bot(settings):
        names = {c["name"] for c in fake_discord.commands_for(guild)}
        assert "imagine" in names

        inter = await fake_discord.invoke(
            "imagine",
            {"prompt": "a lighthouse at dusk --seed 7", "count": 4},
            guild=guild,
            channel=channel,
            user=alice,
        )
        await inter.wait_response()
        assert not inter.late and inter.callbacks[0]["type"] == 5  # deferred within Discord's 3 s

        message = await fake_discord.wait_for_message(
            lambda m: (
                m.interaction_id == inter.id and any(a.filename.endswith(".png") for a in m.attachments)
            ),
            timeout=120,
        )
        picture = Image.open(io.BytesIO(message.attachments[0].data))
        picture.load()
        assert picture.size == (2 * 128 + GRID_GAP, 2 * 128 + GRID_GAP)
        assert "seeds 7–10" in message.content and "lighthouse" in message.content
        # The tiny model's random weights still draw something, not a flat fill.
        assert len(np.unique(np.asarray(picture.convert("L")))) > 10

    db = sqlite3.connect(tmp_path / "bot.db")
    state, count, result_id, delivered = db.execute(
        "select state, count, result_message_id, delivered_at from jobs"
    ).fetchone()
    assert (state, count, result_id) == ("done", 4, message.id) and delivered
    images = db.execute(
        'select idx, seed, path, width from (select "index" as idx, seed, path, width from images) '
        "order by idx"
    ).fetchall()
    assert [(i, s) for i, s, _, _ in images] == [(0, 7), (1, 8), (2, 9), (3, 10)]
    for _, _, path, width in images:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (128, 128) == (width, width)
    usage = db.execute("select user_id, guild_id, images, engine_seconds from usage").fetchall()
    assert usage[0][:3] == (alice.id, guild.id, 4) and usage[0][3] > 0


async def test_bad_flag_gets_an_ephemeral_answer_and_writes_nothing(
    fake_discord, make_settings, run_bot, tmp_path
):
    guild, channel, alice = _world(fake_discord)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        inter = await fake_discord.invoke(
            "imagine", {"prompt": "cat --stylize 9"}, guild=guild, channel=channel, user=alice
        )
        await inter.wait_response()
        assert inter.ephemeral
        assert "--stylize" in inter.callbacks[0]["data"]["content"]
    assert sqlite3.connect(tmp_path / "bot.db").execute("select count(*) from jobs").fetchone() == (0,)
    assert not list(Path(tmp_path).glob("images/**/*.png"))  # noqa: ASYNC240 (a test, after the bot stopped)
