"""Buttons acknowledge before any database work: Discord drops a click not answered within 3 s, and the
job lookup (or the admission after it) can wait on a busy database. The lookup is held at a barrier
until the fake Discord has seen the acknowledgement; before the fix the click waited on the lookup and
this test timed out."""

from __future__ import annotations

import asyncio

from tests.bot.answers import refusal, settled
from tests.bot.cogs.test_imagine_flow import _click, _imagine, _world


async def test_every_button_is_acknowledged_before_the_job_is_read(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, bob = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id)) as bot:
        _, result = await _imagine(fake, guild, channel, alice, "a quiet harbour --count 1")
        real_get = bot.store.get
        release = asyncio.Event()

        async def held_get(job_id: str):  # the real lookup, once the test lets it through
            await release.wait()
            return await real_get(job_id)

        bot.store.get = held_get  # type: ignore[method-assign]
        for label, private in (("ℹ️", True), ("🗑️", True), ("V1", False), ("🔄", False)):
            click = await _click(fake, result, label, bob)
            await click.wait_response(timeout=10)  # answered while the lookup is still held
            assert click.deferred and click.ephemeral is private, label
            release.set()
            await settled(fake, click, timeout=120)
            release.clear()
        bot.store.get = real_get  # type: ignore[method-assign]


async def test_a_refused_variation_is_private_after_the_public_defer(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id, DEFAULT_DAILY_IMAGES=1)):
        _, result = await _imagine(fake, guild, channel, alice, "a quiet harbour --count 1")
        click = await _click(fake, result, "V1", alice)  # four more pictures: over Alice's daily 1
        await settled(fake, click, timeout=60)
        text = refusal(click)
        assert text is not None and "daily_images" in text
        assert click.original is not None and click.original.deleted  # nothing left in the channel
