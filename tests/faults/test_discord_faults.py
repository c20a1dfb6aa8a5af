"""Discord misbehaving while several members use the whole bot: a burst of 5xx answers, tight rate limits
(429), and a channel that refuses the bot (403). Every job accepted finishes; each result lands exactly
once or is given up with its author told by DM; and a member elsewhere is served while the fault lasts.

The redelivery sweep runs once a minute in the bot; here it is driven by hand (``courier.sweep_once`` with
a clock an hour on), as in tests/bot/cogs/test_delivery_faults.py, so no test waits for the minute.
"""

from __future__ import annotations

import datetime as dt
import re

from bot.cogs.imagine import _redelivery as redelivery
from fakediscord.permissions import SEND_MESSAGES
from tests.faults.members import (
    Club,
    all_settled,
    assert_nothing_lost,
    dms,
    has_result,
    job_of,
    jobs,
    picture_posts,
    recorded,
)
from tests.waiting import wait_until

SETTINGS = {"DEFAULT_SIZE": 64, "PREVIEW_EVERY": 0}


def later(hours: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)


async def test_a_burst_of_5xx_lands_every_result_once(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    club = Club.make(fake, ("art", "lounge"), ("alice", "bob", "carol"))
    db = tmp_path / "bot.db"
    async with run_bot(make_settings(GUILD_IDS=club.guild.id, **SETTINGS)) as bot:
        alice = await club.imagine("alice", "art", "a lighthouse")
        bob = await club.imagine("bob", "art", "a harbour")
        art = club.channels["art"].id
        # Their results go through #art's REST routes (their tokens have died, as after 15 minutes), and
        # those answer 503 (which discord.py does not retry) until the outage ends.
        for inter in (alice, bob):
            fake.expire_token(inter)
        outage = fake.faults.outage("*", rf"/channels/{art}/messages")
        # Carol, in #lounge, is served meanwhile, through a 502 on her reply that discord.py retries itself.
        carol = await club.imagine("carol", "lounge", "a kite")
        fake.fail_next("PATCH", re.escape(carol.token), status=502)
        await fake.wait_until(lambda: has_result(fake, db, carol), timeout=120)
        assert any(s == 502 and carol.token in p for _, p, s in fake.requests)

        def refused_once(inter) -> bool:  # finished, and its delivery refused (counted, backing off)
            row = job_of(db, inter)
            return row is not None and row["state"] == "done" and row["delivery_attempts"] >= 1

        await wait_until(lambda: refused_once(alice) and refused_once(bob), "the refused deliveries")
        assert not has_result(fake, db, alice) and not has_result(fake, db, bob)
        assert any(m == "POST" for m, _ in outage.refused)
        outage.end()
        # The next sweep posts both in the channel, each once, replying to the member; the first post meets
        # one more 500, which discord.py retries by itself: still one message.
        fake.fail_next("POST", rf"/channels/{art}/messages$", status=500)
        await bot.courier.sweep_once(now=later(1))
        await wait_until(lambda: all_settled(db), "every job delivered")
        assert [s for m, p, s in fake.requests if m == "POST" and p.endswith(f"{art}/messages")][-3:] == [
            500,
            200,
            200,
        ]
        for inter, member in ((alice, "alice"), (bob, "bob")):
            (post,) = picture_posts(fake, (await recorded(db, inter))["id"])
            assert f"<@{club.members[member].id}>" in post.content
        # A later sweep has nothing left to post.
        before = len(fake.messages)
        await bot.courier.sweep_once(now=later(2))
        assert len(fake.messages) == before
        assert bot.jobs.active_jobs() == []
    rows = assert_nothing_lost(fake, db, accepted=3)
    assert {j["state"] for j in rows} == {"done"} and not any(j["undeliverable"] for j in rows)


async def test_tight_rate_limits_land_every_result_without_hammering(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    club = Club.make(fake, ("art",), ("alice", "bob", "carol", "dave"))
    db = tmp_path / "bot.db"
    # One request a second on each reply (per interaction token), on posting in a channel, on reactions.
    for route in (
        "PATCH /webhooks/{app}/{token}/messages/{message_id}",
        "POST /channels/{channel_id}/messages",
        "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
    ):
        fake.rate_limits.set(route, limit=1, per=1.0)
    async with run_bot(make_settings(GUILD_IDS=club.guild.id, **{**SETTINGS, "PREVIEW_EVERY": 1})) as bot:
        inters = [await club.imagine(name, "art", f"a tower by {name}") for name in ("alice", "bob", "carol")]
        # Dave asks while the others' news and results are being rate limited, and is served too.
        inters.append(await club.imagine("dave", "art", "a bridge"))
        for inter in inters:
            await fake.wait_until(lambda i=inter: has_result(fake, db, i), timeout=120)
        await wait_until(lambda: all_settled(db), "every job delivered")
        await fake.wait_until(
            lambda: all(fake.bot_user.id in p.reactions.get("🔄", set()) for p in results(fake, db)),
            timeout=60,
        )
        assert bot.jobs.active_jobs() == []
    rows = assert_nothing_lost(fake, db, accepted=4)
    assert {j["state"] for j in rows} == {"done"}
    # discord.py waits out the buckets it learnt from the headers: at most a first 429 per bucket.
    too_many = [(m, p) for m, p, s in fake.invalid_requests.log if s == 429]
    assert len(too_many) <= 3, too_many
    assert fake.invalid_requests.count == len(too_many)  # no 401/403 either


def results(fake, db) -> list:
    """Every posted result picture's message."""
    return [m for j in jobs(db) for m in picture_posts(fake, j["id"])]


async def test_a_channel_refusing_the_bot_gives_up_there_and_serves_the_others(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    club = Club.make(fake, ("closed", "open"), ("alice", "bob", "carol"))
    db = tmp_path / "bot.db"
    closed = club.channels["closed"]
    # The bot may not post in #closed (an admin's overwrite). Interaction replies need no such permission,
    # so Alice's and Bob's results go through the channel: their tokens have died (as after 15 minutes).
    fake.set_overwrite(closed, fake.bot_user, deny=SEND_MESSAGES)
    async with run_bot(make_settings(GUILD_IDS=club.guild.id, **SETTINGS)) as bot:
        refused = []
        for name, prompt in (("alice", "a lighthouse"), ("bob", "a harbour")):
            inter = await club.imagine(name, "closed", prompt)
            fake.expire_token(inter)
            refused.append(inter)

        def tried(inter, attempts: int) -> bool:
            row = job_of(db, inter)
            return row is not None and row["state"] == "done" and row["delivery_attempts"] >= attempts

        # Carol in #open is served while #closed refuses.
        carol = await club.imagine("carol", "open", "a kite")
        await fake.wait_until(lambda: has_result(fake, db, carol), timeout=120)
        await wait_until(lambda: all(tried(i, 1) for i in refused), "the first refusals")
        # A missing permission gets a few tries (an admin may fix it), then the author is told by DM.
        for hours in range(1, redelivery.REFUSED_TRIES):
            await bot.courier.sweep_once(now=later(hours))
            assert all(tried(i, hours + 1) for i in refused)
        await wait_until(lambda: all_settled(db), "the refused jobs to be given up")
        for inter, member in zip(refused, ("alice", "bob"), strict=True):
            row = job_of(db, inter)
            assert row["undeliverable"] == "I'm not allowed to post there (a permission is missing)"
            (note,) = [d for d in dms(fake, club.members[member]) if row["id"] in d]
            assert "not allowed to post" in note
        # Given up means given up: the next sweep sends nothing anywhere.
        before = len(fake.requests)
        await bot.courier.sweep_once(now=later(24))
        assert len(fake.requests) == before
        assert bot.jobs.active_jobs() == []
    rows = assert_nothing_lost(fake, db, accepted=3)
    given_up = {j["prompt"] for j in rows if j["undeliverable"] is not None}
    assert given_up == {"a lighthouse", "a harbour"}
    # The refusals were few: no retry storm against a channel that says no.
    forbidden = [p for _, p, s in fake.invalid_requests.log if s == 403]
    assert len(forbidden) <= 4 * redelivery.REFUSED_TRIES, forbidden
