"""The database locked by another process (a backup tool holding BEGIN EXCLUSIVE past the bot's busy timeout)
while members submit and results arrive, through the whole bot. Whoever could not be recorded is told so
plainly; results finished before or during the lock are posted once it is gone, each exactly once; others
are answered meanwhile (reads work: WAL)."""

from __future__ import annotations

import datetime as dt

from fakediscord.permissions import READ_MESSAGE_HISTORY
from tests.bot.jobs.test_faults import write_lock
from tests.faults.members import Club, all_settled, assert_nothing_lost, has_result, job_of, recorded
from tests.waiting import wait_until


async def test_a_locked_database_loses_nothing_and_tells_whoever_was_not_recorded(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    club = Club.make(fake, ("art",), ("alice", "bob", "carol", "dave"))
    db = tmp_path / "bot.db"
    # Without history the bot cannot look for a result it posted but did not record: exactly once then
    # rests on recording the delivery, the part a locked database gets in the way of.
    fake.set_overwrite(club.channels["art"], fake.bot_user, deny=READ_MESSAGE_HISTORY)
    settings = make_settings(GUILD_IDS=club.guild.id, DEFAULT_STEPS=8, DEFAULT_SIZE=64, PREVIEW_EVERY=0)
    async with run_bot(settings) as bot:
        alice = await club.imagine("alice", "art", "a lighthouse")
        # Dave's job has other steps, so it runs in the next batch: its result comes while the lock is held.
        dave = await club.imagine("dave", "art", "a mill", steps=30)
        alice_id = (await recorded(db, alice))["id"]
        await recorded(db, dave)
        # Alice's result is recorded; posting it takes a moment (slow webhooks), and the lock is taken then.
        fake.latency.webhooks = 2.0

        def alice_done() -> bool:
            row = job_of(db, alice)
            return row is not None and row["state"] == "done"

        await wait_until(alice_done, "Alice's job to be recorded as done", poll=0.005)
        with write_lock(db):
            # Alice's picture reaches Discord while the lock is held: the bot cannot record that yet.
            await fake.wait_until(lambda: has_result(fake, db, alice), timeout=30)
            fake.latency.webhooks = None
            assert job_of(db, alice)["delivered_at"] is None
            # Bob asks now: acknowledged at once, then told plainly that it was not recorded. (His write
            # waits its turn behind the bot's first try at recording Alice's delivery, which times out.)
            bob = await club.imagine("bob", "art", "a harbour")
            await fake.wait_until(lambda: bob.original is not None and not bob.original.loading, timeout=60)
            assert "couldn't queue that" in bob.original.content
            assert "Traceback" not in bob.original.content and "locked" not in bob.original.content
            # Carol's /usage is answered while the lock lasts (it only reads).
            usage = await fake.invoke("usage", {}, guild=club.guild, channel=club.channels["art"],
                                      user=club.members["carol"])  # fmt: skip
            await fake.wait_until(lambda: any("Usage for" in m.content for m in usage.followups), timeout=30)
        # The lock is gone: Dave's result, finished meanwhile, is posted; both are recorded as delivered
        # without waiting for the redelivery sweep.
        await fake.wait_until(lambda: has_result(fake, db, dave), timeout=60)
        await wait_until(lambda: all_settled(db), "every job recorded as delivered", timeout=30)
        # The next sweep (every minute) finds nothing to post again (it could not tell that it had been).
        await bot.courier.sweep_once(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        # Bob tries again and is served.
        again = await club.imagine("bob", "art", "a harbour")
        await fake.wait_until(lambda: has_result(fake, db, again), timeout=120)
        await wait_until(lambda: all_settled(db), "every job delivered")
        assert bot.jobs.active_jobs() == []
    assert job_of(db, bob) is None  # nothing half-written of the refused submit
    rows = assert_nothing_lost(fake, db, accepted=3)
    assert {j["state"] for j in rows} == {"done"}
    assert next(j for j in rows if j["id"] == alice_id)["delivery_attempts"] == 0
