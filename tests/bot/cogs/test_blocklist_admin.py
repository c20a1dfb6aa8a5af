"""/blocklist through the loopback Discord and the real bot: what add refuses, who autocomplete answers,
and the CLIP-style spellings a member's /imagine is refused for."""

import pytest

from tests.bot.answers import refusal, went_ahead
from tests.bot.cogs.test_admin import bot_for, db, run, text, world  # noqa: F401


async def choices(world, user, guild=None, typed=""):  # noqa: F811
    guild = guild or world.a
    channel = world.chan_a if guild is world.a else world.chan_b
    inter = await world.fake.autocomplete(
        "blocklist", "term", typed, guild=guild, channel=channel, user=user, subcommand="remove"
    )
    await inter.wait_response(10)
    return [c["value"] for c in inter.autocomplete_choices]


async def test_remove_autocomplete_answers_only_admins(world, bot_for):  # noqa: F811
    async with bot_for():
        for term in ("gore", "/blood(y|bath)/"):
            added = await run(world, "blocklist", {"term": term}, user=world.admin, subcommand="add")
            assert "✅ Blocked" in text(added), text(added)
        assert sorted(await choices(world, world.admin)) == ["/blood(y|bath)/", "gore"]
        assert await choices(world, world.admin, typed="blo") == ["/blood(y|bath)/"]
        # A member, even one with a role, learns nothing of the list.
        assert await choices(world, world.alice) == []
        assert await choices(world, world.bob, typed="g") == []
        # A's admin is a plain member in B, and B's list is B's business.
        assert await choices(world, world.admin, guild=world.b) == []


@pytest.mark.parametrize(
    ("term", "reason"),
    [
        ("/(gore)\\1/", "back-reference"),
        ("/gore(?=scene)/", "lookahead or lookbehind"),
        ("/(?<!i)gore/", "lookahead or lookbehind"),
    ],
)
async def test_add_refuses_patterns_re2_cannot_take(world, bot_for, tmp_path, term, reason):  # noqa: F811
    async with bot_for():
        inter = await run(world, "blocklist", {"term": term}, user=world.admin, subcommand="add")
        assert inter.ephemeral and reason in text(inter) and "RE2" in text(inter), text(inter)
        listed = await run(world, "blocklist", {}, user=world.admin, subcommand="list")
        assert "Nothing is blocked" in text(listed)
    assert db(tmp_path).execute("select count(*) from audit_log").fetchone() == (0,)


async def test_spellings_clip_reads_as_the_word_are_refused(world, bot_for):  # noqa: F811
    async with bot_for():
        added = await run(world, "blocklist", {"term": "gore"}, user=world.admin, subcommand="add")
        assert "word breaks" in text(added)  # the answer tells the admin how it will match
        # The freezing pattern is linear under RE2, so it is accepted and harmless.
        slow = await run(world, "blocklist", {"term": "/(.|\\s)*xyz/"}, user=world.admin, subcommand="add")
        assert "✅ Blocked" in text(slow), text(slow)
        for prompt in ("a gore_scene", "gore2 scene", "gore\u200bscene", "ɢᴏʀᴇ at dawn"):
            inter = await run(world, "imagine", {"prompt": prompt}, user=world.alice)
            assert refusal(inter) and "`gore`" in text(inter), (prompt, text(inter))
        frozen = await run(world, "imagine", {"prompt": "a " * 40 + "b"}, user=world.alice)
        assert went_ahead(frozen)
        fine = await run(world, "imagine", {"prompt": "gorges, ignore the fog"}, user=world.bob)
        assert went_ahead(fine)
