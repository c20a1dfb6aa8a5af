"""/usage and /stats through the loopback Discord, with jobs finished by a scripted engine."""

import io
import sqlite3

import pytest
from PIL import Image

from fakediscord.plugin import make_world
from tests.bot.answers import answer, settled
from tests.bot.jobs.scripted import ScriptedTransport, scripted_bot, scripted_settings


@pytest.fixture
def world(fake_discord):
    w = make_world(fake_discord)
    w.carol = w.new_member("carol")
    return w


async def run(world, name, options=None, *, user, channel=None):
    inter = await world.fake.invoke(
        name, options or {}, guild=world.guild, channel=channel or world.channel, user=user
    )
    await settled(world.fake, inter)  # acknowledged first, answered after the database read and the chart
    return inter


def text(inter):
    return answer(inter)


def chart(inter, name):
    """The PNG chart attached to the answer, decoded: a picture, of a sane size."""
    message = inter.original
    assert message is not None and [a.filename for a in message.attachments] == [f"{name}.png"]
    attachment = message.attachments[0]
    assert attachment.content_type == "image/png" and attachment.data.startswith(b"\x89PNG")
    picture = Image.open(io.BytesIO(attachment.data))
    picture.load()  # the whole stream decodes
    assert 400 <= picture.width <= 1200 and 300 <= picture.height <= 1200, picture.size
    return picture


def bars(picture, row):
    """How many bar-coloured pixels the row at ``row`` (0-1 of the height) holds: empty panels have none."""
    y = int(picture.height * row)
    rgb = picture.convert("RGB")
    return sum(1 for x in range(picture.width) if rgb.getpixel((x, y)) == (0x58, 0x65, 0xF2))


async def make_pictures(world, tmp_path, jobs):
    for user, count in jobs:
        assert (await run(world, "imagine", {"prompt": "a kite", "count": count}, user=user)).deferred
    db = sqlite3.connect(tmp_path / "bot.db")
    await world.fake.wait_until(
        lambda: (
            db.execute("select count(*) from jobs where delivered_at is not null").fetchone()[0] == len(jobs)
        ),
        timeout=30,
    )


async def test_usage_and_stats(world, tmp_path):
    settings = scripted_settings(world.fake, tmp_path, GUILD_IDS=world.guild.id, DEFAULT_DAILY_IMAGES=20)
    async with scripted_bot(world.fake, settings, ScriptedTransport(slots=2, auto_finish=True)):
        before = await run(world, "usage", user=world.member)
        assert (
            before.ephemeral
            and "Today: **0** images" in text(before)
            and "20 of 20 images left" in text(before)
        )

        await make_pictures(world, tmp_path, [(world.member, 4), (world.member, 2), (world.carol, 1)])

        mine = await run(world, "usage", user=world.member)
        assert mine.ephemeral
        chart(mine, "usage")
        for line in (
            "Today: **6** images in 2 jobs · 1.0 s",
            "This month: **6** images",
            "All time: **6** images",
            "14 of 20 images left (`daily_images`)",
            "00:00 UTC",
        ):
            assert line in text(mine), text(mine)

        nosy = await run(world, "usage", {"user": world.member}, user=world.carol)
        assert nosy.ephemeral and "Only this server's admins" in text(nosy)
        checked = await run(world, "usage", {"user": world.carol}, user=world.admin)
        assert f"Usage for <@{world.carol.id}>" in text(checked)
        assert "Today: **1** image in 1 job ·" in text(checked)  # one of each: no plural

        stats = await run(world, "stats", user=world.carol)
        body = text(stats)
        assert not stats.ephemeral
        assert "All time: **7** images in 3 jobs · 1.5 s of engine time · 2 members made pictures" in body
        assert "Average wait before a job starts (last 7 days): " in body and "no jobs yet" not in body
        assert "Queue now: 0 running and 0 waiting here" in body
        top = body.split("**Top users**")[1]
        assert top.index(f"<@{world.member.id}> — 6 images") < top.index(f"<@{world.carol.id}> — 1 image\n")
        # Mentions in /stats are shown, never pinged.
        assert f"<@{world.member.id}>" in body and stats.original.mentions == []
        picture = chart(stats, "stats")
        # Today's bar (the last of the days panel) is drawn: seven images, near the panel's top.
        assert any(bars(picture, row / 100) for row in range(8, 30))


async def test_stats_in_an_empty_server(world, tmp_path):
    settings = scripted_settings(world.fake, tmp_path, GUILD_IDS=world.guild.id)
    async with scripted_bot(world.fake, settings, ScriptedTransport()):
        stats = await run(world, "stats", user=world.member)
        assert "All time: **0** images in 0 jobs" in text(stats) and "no jobs yet" in text(stats)
        assert "Top users" not in text(stats)
        picture = chart(stats, "stats")  # empty panels, still a chart
        assert not any(bars(picture, row / 100) for row in range(8, 30))
