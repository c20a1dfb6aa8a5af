"""Admin commands through the loopback Discord and the real bot (engine: a scripted transport)."""

import sqlite3
from types import SimpleNamespace

import pytest

from fakediscord.state import MANAGE_GUILD
from tests.bot.answers import answer, refusal, settled, went_ahead
from tests.bot.jobs.scripted import ScriptedTransport, scripted_bot, scripted_settings


@pytest.fixture
def world(fake_discord):
    fake = fake_discord
    a = fake.add_guild("Guild A")
    b = fake.add_guild("Guild B")
    w = SimpleNamespace(fake=fake, a=a, b=b)
    w.chan_a, w.nsfw_a = fake.add_channel(a, "art"), fake.add_channel(a, "after-dark", nsfw=True)
    w.chan_b = fake.add_channel(b, "art")
    w.patrons = fake.add_role(a, "Patrons")
    w.mods = fake.add_role(a, "Bot mods")
    w.b_role = fake.add_role(b, "B role")
    w.admin = fake.add_user("admin_a")  # admin in A, plain member in B
    fake.add_member(a, w.admin, permissions=MANAGE_GUILD)
    fake.add_member(b, w.admin)
    w.alice, w.bob, w.mod = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("mod")
    fake.add_member(a, w.alice)
    fake.add_member(a, w.bob, roles=[w.patrons])
    fake.add_member(a, w.mod, roles=[w.mods])
    fake.add_member(b, w.alice)
    return w


@pytest.fixture
def bot_for(world, tmp_path):
    def make(transport=None, **settings):
        settings = scripted_settings(world.fake, tmp_path, GUILD_IDS=f"{world.a.id},{world.b.id}", **settings)
        return scripted_bot(world.fake, settings, transport or ScriptedTransport(slots=0))

    return make


def db(tmp_path):
    return sqlite3.connect(tmp_path / "bot.db")


async def run(world, name, options=None, *, user, guild=None, channel=None, **kw):
    guild = guild or world.a
    channel = channel or (world.chan_a if guild is world.a else world.chan_b)
    inter = await world.fake.invoke(name, options or {}, guild=guild, channel=channel, user=user, **kw)
    # Commands acknowledge before the database: the answer follows the defer (tests/bot/answers.py).
    await settled(world.fake, inter)
    return inter


async def jobs_recorded(world, tmp_path, count):
    """Wait until ``count`` jobs are in the database (an accepted /imagine defers first, then records)."""
    await world.fake.wait_until(
        lambda: db(tmp_path).execute("select count(*) from jobs").fetchone()[0] >= count, timeout=10
    )


def text(inter):
    return answer(inter)


async def test_admin_commands_are_gated_by_discord_and_by_the_bot(world, bot_for, tmp_path):
    async with bot_for():
        cmds = {c["name"]: c for c in world.fake.commands_for(world.a)}
        for name in ("limits", "ban", "unban", "blocklist", "queue"):
            assert str(cmds[name]["default_member_permissions"]) == str(MANAGE_GUILD), name
            assert cmds[name].get("dm_permission") is False or cmds[name].get("contexts") == [0], name
        assert cmds["cancel"]["default_member_permissions"] is None  # authors cancel their own jobs
        # Alice has no Manage Server; the fake, like a guild that loosened the gate, lets her call it anyway.
        for name, options, sub in (
            ("limits", {"setting": "daily_images", "value": 1000}, "set"),
            ("limits", {}, "show"),
            ("ban", {"user": world.bob}, None),
            ("blocklist", {"term": "cats"}, "add"),
            ("queue", {}, None),
        ):
            inter = await run(world, name, options, user=world.alice, subcommand=sub)
            assert inter.ephemeral and "Only this server's admins" in text(inter), (name, text(inter))
    con = db(tmp_path)
    for table in ("limit_overrides", "bans", "blocked_terms", "audit_log"):
        assert con.execute(f"select count(*) from {table}").fetchone() == (0,), table


async def test_an_admin_of_guild_a_cannot_change_guild_b(world, bot_for, tmp_path):
    async with bot_for():
        inter = await run(
            world,
            "limits",
            {"setting": "max_steps", "value": 99},
            user=world.admin,
            guild=world.b,
            subcommand="set",
        )
        assert inter.ephemeral and "Only this server's admins" in text(inter)
        inter = await run(
            world, "limits", {"setting": "max_steps", "value": 99}, user=world.admin, subcommand="set"
        )
        assert inter.ephemeral and "`max_steps` for the whole server: not set → **99**" in text(inter)
        # A role of guild B smuggled into guild A's command is refused, not stored under A.
        inter = await run(
            world,
            "limits",
            {"setting": "max_steps", "value": 5, "role": world.b_role},
            user=world.admin,
            subcommand="set",
        )
        assert "not in this server" in text(inter)
        # Guild B still has the bot defaults: Alice may not use 99 steps there.
        inter = await run(world, "imagine", {"prompt": "cat --steps 99"}, user=world.alice, guild=world.b)
        assert refusal(inter) and "between 1 and 50" in text(inter)
    rows = (
        db(tmp_path).execute("select guild_id, scope, target_id, name, value from limit_overrides").fetchall()
    )
    assert rows == [(world.a.id, "guild", world.a.id, "max_steps", 99)]


async def test_a_role_override_beats_the_guild_default(world, bot_for, tmp_path):
    async with bot_for():
        for options in (
            {"setting": "max_steps", "value": 10},
            {"setting": "max_steps", "value": 40, "role": world.patrons},
        ):
            inter = await run(world, "limits", options, user=world.admin, subcommand="set")
            assert "✅" in text(inter), text(inter)
        refused = await run(world, "imagine", {"prompt": "a fox", "steps": 30}, user=world.alice)
        assert refusal(refused) and "between 1 and 10" in text(refused)
        accepted = await run(world, "imagine", {"prompt": "a fox", "steps": 30}, user=world.bob)
        assert went_ahead(accepted)
        await jobs_recorded(world, tmp_path, 1)
        shown = await run(world, "limits", {"user": world.bob}, user=world.admin, subcommand="show")
        assert "`max_steps` **40** · role" in text(shown)
        assert f"<@&{world.patrons.id}>: `max_steps` = 40" in text(shown)
        history = await run(world, "limits", {}, user=world.admin, subcommand="history")
        assert f"<@&{world.patrons.id}> max_steps: — → 40" in text(history)
    steps = db(tmp_path).execute("select user_id, steps from jobs").fetchall()
    assert steps == [(world.bob.id, 30)]


async def test_reaching_the_daily_quota_is_refused_with_the_reset_time(world, bot_for, tmp_path):
    async with bot_for():
        await run(
            world, "limits", {"setting": "daily_images", "value": 6}, user=world.admin, subcommand="set"
        )
        first = await run(world, "imagine", {"prompt": "a boat", "count": 4}, user=world.alice)
        assert went_ahead(first)
        second = await run(world, "imagine", {"prompt": "a boat", "count": 4}, user=world.alice)
        assert refusal(second)
        assert "2 of 6 left today (`daily_images`)" in text(second) and "00:00 UTC (<t:" in text(second)
        third = await run(world, "imagine", {"prompt": "a boat", "count": 2}, user=world.alice)
        assert went_ahead(third)
        last = await run(world, "imagine", {"prompt": "a boat", "count": 1}, user=world.alice)
        assert (
            refusal(last)
            and "used all 6 of your images for today" in text(last)
            and "00:00 UTC" in text(last)
        )
        await jobs_recorded(world, tmp_path, 2)
        usage = await run(world, "usage", {}, user=world.alice)
        assert usage.ephemeral and "0 of 6 images left" in text(usage)
    assert db(tmp_path).execute("select count(*), sum(count) from jobs").fetchone() == (2, 6)


async def test_a_blocked_term_with_odd_unicode_is_caught(world, bot_for, tmp_path):
    async with bot_for():
        added = await run(world, "blocklist", {"term": "Gore"}, user=world.admin, subcommand="add")
        assert "✅ Blocked `Gore`" in text(added)
        again = await run(world, "blocklist", {"term": "Gore"}, user=world.admin, subcommand="add")
        assert "already" in text(again)
        bad = await run(world, "blocklist", {"term": "/(x)\\1/"}, user=world.admin, subcommand="add")
        assert bad.ephemeral and "back-reference" in text(bad)
        for prompt in ("a scene full of ｇ\u200bо\u0301ʀe", "GŌRE!!"):
            inter = await run(world, "imagine", {"prompt": prompt}, user=world.alice)
            assert refusal(inter) and "`Gore`" in text(inter) and "blocklist" in text(inter), text(inter)
        inter = await run(world, "imagine", {"prompt": "a cat", "negative": "gore"}, user=world.alice)
        assert refusal(inter) and "negative prompt" in text(inter)
        ok = await run(world, "imagine", {"prompt": "Gregory the gorilla"}, user=world.alice)
        assert went_ahead(ok)
        listed = await run(world, "blocklist", {}, user=world.admin, subcommand="list")
        assert "`Gore`" in text(listed)
        removed = await run(world, "blocklist", {"term": "Gore"}, user=world.admin, subcommand="remove")
        assert "no longer blocked" in text(removed)
        inter = await run(world, "imagine", {"prompt": "gore"}, user=world.alice)
        assert went_ahead(inter)
        await jobs_recorded(world, tmp_path, 2)
    audit = db(tmp_path).execute("select action, old_value, new_value from audit_log order by id").fetchall()
    assert audit == [("blocklist.add", None, "Gore"), ("blocklist.remove", "Gore", None)]


async def test_ban_and_unban(world, bot_for, tmp_path):
    async with bot_for():
        queued = await run(world, "imagine", {"prompt": "a lamp"}, user=world.alice)
        assert went_ahead(queued)
        await jobs_recorded(world, tmp_path, 1)
        banned = await run(world, "ban", {"user": world.alice, "reason": "spam"}, user=world.admin)
        assert "Banned" in text(banned) and "cancelled 1" in text(banned)
        inter = await run(world, "imagine", {"prompt": "a lamp"}, user=world.alice)
        assert refusal(inter) and "banned" in text(inter) and "spam" in text(inter)
        elsewhere = await run(world, "imagine", {"prompt": "a lamp"}, user=world.alice, guild=world.b)
        assert went_ahead(elsewhere)  # the ban is guild A's
        unbanned = await run(world, "unban", {"user": world.alice}, user=world.admin)
        assert "again" in text(unbanned)
        assert went_ahead(await run(world, "imagine", {"prompt": "a lamp"}, user=world.alice))
        await jobs_recorded(world, tmp_path, 3)
    con = db(tmp_path)
    assert con.execute("select action, actor_id from audit_log order by id").fetchall() == [
        ("ban", world.admin.id),
        ("unban", world.admin.id),
    ]
    assert con.execute("select state from jobs order by created_at").fetchall()[0] == ("cancelled",)


async def test_queue_and_cancel(world, bot_for, tmp_path):
    async with bot_for(DEFAULT_QUEUED_JOBS=5):
        for user in (world.alice, world.alice, world.bob):
            assert went_ahead(await run(world, "imagine", {"prompt": f"{user.username}'s dragon"}, user=user))
        await jobs_recorded(world, tmp_path, 3)
        job_ids = [r[0] for r in db(tmp_path).execute("select id, user_id from jobs order by created_at")]
        queue = await run(world, "queue", {}, user=world.admin)
        assert "0 running, 3 waiting" in text(queue) and f"`{job_ids[2][:8]}` ⏳ #2" in text(queue)
        # Bob can't cancel Alice's job; Alice can, with the short id; an admin can cancel Bob's.
        refused = await run(world, "cancel", {"job": job_ids[0][:8]}, user=world.bob)
        assert refused.ephemeral and "author" in text(refused)
        assert "Cancelling" in text(await run(world, "cancel", {"job": job_ids[0][:8]}, user=world.alice))
        assert "Cancelling" in text(await run(world, "cancel", {"job": job_ids[2]}, user=world.admin))
        again = await run(world, "cancel", {"job": job_ids[0]}, user=world.alice)
        assert "already cancelled" in text(again)
        for junk in ("'; drop table jobs; --", "x" * 5000, "zzzzzzzz"):
            inter = await run(world, "cancel", {"job": junk}, user=world.alice)
            assert inter.ephemeral and "job id" in text(inter)
        missing = await run(world, "cancel", {"job": "abcdef12"}, user=world.alice)
        assert "can't find" in text(missing)
        choices = await world.fake.autocomplete(
            "cancel", "job", "", guild=world.a, channel=world.chan_a, user=world.alice
        )
        await choices.wait_response()
        assert [c["value"] for c in choices.autocomplete_choices] == [job_ids[1]]
    con = db(tmp_path)
    states = con.execute("select state from jobs order by created_at").fetchall()
    assert states == [("cancelled",), ("queued",), ("cancelled",)]
    assert con.execute("select action, actor_id from audit_log").fetchall() == [
        ("job.cancel", world.admin.id)
    ]


async def test_malformed_options_get_a_clear_answer_and_write_nothing(world, bot_for, tmp_path):
    async with bot_for(ADMIN_ROLE_IDS=world.mods.id):
        cases = [
            ({"setting": "max_steps", "value": 10_000}, "set", "between 1 and 150"),
            ({"setting": "allow_img2img", "value": 7}, "set", "1 (allowed) or 0"),
            ({"setting": "world_domination", "value": 1}, "set", "no limit called"),
            (
                {"setting": "daily_images", "value": 5, "role": world.patrons, "user": world.bob},
                "set",
                "not both",
            ),
            ({"setting": "daily_images"}, "reset", "nothing to reset"),
        ]
        for options, sub, expected in cases:
            # The mod has no Manage Server, only a role listed in ADMIN_ROLE_IDS.
            inter = await run(world, "limits", options, user=world.mod, subcommand=sub)
            assert inter.ephemeral and expected in text(inter), (options, text(inter))
        huge = await run(world, "imagine", {"prompt": "x" * 5000}, user=world.alice)
        assert huge.ephemeral and "1500" in text(huge)
        long_reason = await run(world, "ban", {"user": world.bob, "reason": "r" * 600}, user=world.mod)
        assert long_reason.ephemeral and "most is 500" in text(long_reason)
        term = await run(world, "blocklist", {"term": "t" * 300}, user=world.mod, subcommand="add")
        assert term.ephemeral and "at most 200" in text(term)
    con = db(tmp_path)
    for table in ("limit_overrides", "bans", "blocked_terms", "audit_log", "jobs"):
        assert con.execute(f"select count(*) from {table}").fetchone() == (0,), table


async def test_flagged_images_are_not_posted_outside_nsfw_channels(world, bot_for, tmp_path):
    transport = ScriptedTransport(slots=4, auto_finish=True, nsfw={1})
    async with bot_for(transport, SAFETY_CHECKER="checker"):
        plain = await run(world, "imagine", {"prompt": "a beach", "count": 2}, user=world.alice)
        message = await world.fake.wait_for_message(
            lambda m: m.interaction_id == plain.id and "pictures were held back" in m.content, timeout=20
        )
        assert "1 of 2 pictures were held back by the safety checker" in message.content
        assert len(message.attachments) == 1  # the grid, with a dark tile where the flagged one was
        nsfw = await run(
            world, "imagine", {"prompt": "a beach", "count": 2}, user=world.alice, channel=world.nsfw_a
        )
        done = await world.fake.wait_for_message(
            lambda m: m.interaction_id == nsfw.id and m.attachments and not m.loading, timeout=20
        )
        assert "held back" not in done.content
    assert [r.safety_check for r in transport.submitted] == [True, False]  # #art, then the NSFW channel
    flags = (
        db(tmp_path)
        .execute(
            'select i.nsfw from images i join jobs j on j.id = i.job_id order by j.created_at, i."index"'
        )
        .fetchall()
    )
    assert flags == [(0,), (1,), (0,), (0,)]
