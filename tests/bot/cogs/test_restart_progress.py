"""A bot killed (SIGKILL, engine workers with it) while a job runs leaves the job's reply at "🎨 Step n/N"
with a preview. After the restart the result is posted as a reply to it (the interaction token died with
the old process), and the old reply becomes a pointer to the result: one picture in the channel for one
job, not a stale one beside it."""

from __future__ import annotations

import signal
import sys

import pytest

from tests.bot.botprocess import BotProcess, bot_env, query

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")


def _is_result(m) -> bool:
    return "seed" in m.content and any(a.filename.endswith(".png") for a in m.attachments)


async def test_the_stale_progress_reply_points_at_the_result(fake_discord, tiny_model, tmp_path):
    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    env = bot_env(fake, tmp_path, tiny_model, guild.id)
    env.update(DEFAULT_SIZE="384", DEFAULT_STEPS="50", PREVIEW_EVERY="1")  # slow enough to be caught mid-run
    workdir = tmp_path / "cwd"  # no stray .env from the developer's checkout
    workdir.mkdir()
    bot = BotProcess(env, workdir)
    try:
        await bot.start()
        await bot.wait_ready()
        inter = await fake.invoke("imagine", {"prompt": "a windmill", "count": 1},
                                  guild=guild, channel=channel, user=alice)  # fmt: skip
        status = await fake.wait_for_message(
            lambda m: m.interaction_id == inter.id and "🎨 Step" in m.content and bool(m.attachments),
            timeout=120,
        )
        await bot.kill(signal.SIGKILL)
        # Killed mid-run: the job is still running in the database, its reply shows a step and a preview.
        assert query(tmp_path, "select state, status_message_id from jobs") == [("running", status.id)]
        assert "🎨 Step" in status.content and status.attachments

        await bot.start()
        await bot.wait_ready()
        result = await fake.wait_for_message(
            lambda m: _is_result(m) and "a windmill" in m.content and m.id != status.id, timeout=120
        )
        await fake.wait_until(lambda: "Step" not in status.content, timeout=30)
    finally:
        await bot.kill(signal.SIGKILL)
    assert result.message_reference is not None and int(result.message_reference["message_id"]) == status.id
    assert str(result.id) in status.content and "Finished" in status.content
    assert not status.attachments and not status.buttons()
    pictures = [m for m in fake.messages if "a windmill" in m.content and m.attachments and not m.deleted]
    assert pictures == [result]
    assert query(tmp_path, "select result_message_id from jobs") == [(result.id,)]
