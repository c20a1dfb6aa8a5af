"""What members read: every text goes out through one sender (bot/cogs/common.py: send, edit, reply) that
clips it to Discord's limits, so an overlong text is shortened instead of refused (and retried forever);
an error shown to members carries no absolute path and no traceback (public_error)."""

from __future__ import annotations

import discord
from discord.ext import commands

from bot.cogs.common import MAX_CONTENT, edit, public_error, reply, send


async def test_the_sender_clips_posts_edits_and_answers(fake_discord, discord_world, discord_client):
    fake = fake_discord
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.none())

    @bot.tree.command(name="long", description="Answers with too much text")
    async def long(interaction: discord.Interaction) -> None:
        await reply(interaction, "z" * 2500)

    async def setup(client: commands.Bot) -> None:
        await client.tree.sync()

    async with discord_client(bot, setup=setup):
        channel = bot.get_partial_messageable(discord_world.channel.id, guild_id=discord_world.guild.id)
        posted = await send(channel, content="x" * 5000)
        assert len(posted.content) == MAX_CONTENT and posted.content.endswith("…")
        edited = await edit(posted, content="y" * 3000)
        assert edited.content == "y" * (MAX_CONTENT - 1) + "…"
        stored = fake.get_message(posted.id)
        assert stored is not None and stored.content == edited.content  # Discord accepted it

        inter = await fake.invoke(
            "long", {}, guild=discord_world.guild, channel=discord_world.channel, user=discord_world.member
        )
        await inter.wait_response()
        answer = inter.callbacks[0]["data"]["content"]
        assert inter.ephemeral and len(answer) == MAX_CONTENT and answer.startswith("zzz")


def test_public_error_drops_paths_and_tracebacks():
    posix = "could not load model broken (/srv/bot/models/Stable-diffusion/broken.safetensors): bad header"
    assert public_error(posix) == "could not load model broken (broken.safetensors): bad header"
    windows = r"could not open C:\Users\alice\models\dream.ckpt: denied"
    assert public_error(windows) == "could not open dream.ckpt: denied"
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/opt/bot/engine/runner.py", line 12, in run\n'
        "    raise RuntimeError(x)\n"
        "RuntimeError: CUDA out of memory"
    )
    assert public_error(traceback) == "RuntimeError: CUDA out of memory"
    # Not paths: a URL, a ratio, a slash command.
    kept = "see https://huggingface.co/org/model/tree/main, ratio 16/9, use /imagine"
    assert public_error(kept) == kept
    assert len(public_error("e" * 5000)) == 400
    assert public_error(None) == "unknown error" and public_error("") == "unknown error"
    assert public_error("ping @everyone") == "ping @\u200beveryone"
