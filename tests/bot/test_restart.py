"""A restart loses nothing: the bot (and its engine workers) killed with SIGKILL while 20 jobs are queued
or running, then started again, posts every result exactly once and counts each job once; on SQLite and on
a real PostgreSQL server.

The bot runs as a real ``python -m bot`` subprocess, in its own process group so one ``killpg`` takes
its engine workers down with it; the loopback Discord runs in this test's event loop.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from bot.db.urls import password
from tests.bot.botprocess import BotProcess, bot_env, query

USERS = 4
JOBS_PER_USER = 5
TOTAL = USERS * JOBS_PER_USER

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")

__all__ = ["BotProcess", "bot_env"]  # tests/bot/transport/test_nats.py imports them from here


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> tuple[str | None, Callable[[str], list[tuple]]]:
    """The bot's DATABASE_URL (None: the SQLite file of bot_env) and a reader of its rows."""
    if request.param == "sqlite":
        return None, functools.partial(query, tmp_path)
    server, url = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_url")
    return url, functools.partial(server.rows, url.rsplit("/", 1)[1])


async def test_sigkill_with_20_jobs_in_flight_then_restart_posts_each_exactly_once(
    fake_discord, tiny_model, tmp_path, database
):
    database_url, rows = database
    fake = fake_discord
    guild = fake.add_guild("Restart Club")
    channel = fake.add_channel(guild, "art")
    users = [fake.add_user(f"artist{i}") for i in range(USERS)]
    for user in users:
        fake.add_member(guild, user)
    workdir = tmp_path / "cwd"  # no stray .env from the developer's checkout
    workdir.mkdir()
    bot = BotProcess(bot_env(fake, tmp_path, tiny_model, guild.id, database_url), workdir)
    try:
        await bot.start()
        await bot.wait_ready()
        for turn in range(JOBS_PER_USER):
            for user in users:
                inter = await fake.invoke(
                    "imagine", {"prompt": f"lighthouse {turn} by {user.username}", "count": 2},
                    guild=guild, channel=channel, user=user,
                )  # fmt: skip
                await inter.wait_response()
                assert inter.deferred and not inter.ephemeral, inter.callbacks
        await fake.wait_until(lambda: len(rows("select id from jobs")) == TOTAL, timeout=30)

        # Kill mid-run: as soon as the first result is out (the moment a result is on Discord but perhaps
        # not yet recorded as delivered), while most jobs are still waiting or running.
        def first_result() -> bool:
            return any(a.filename.endswith(".png") for m in fake.messages for a in m.attachments)

        await fake.wait_until(first_result, timeout=120)
        await bot.kill(signal.SIGKILL)
        unfinished = rows("select count(*) from jobs where delivered_at is null")[0][0]
        assert unfinished >= TOTAL // 2, f"only {unfinished} jobs were left to recover"

        await bot.start()
        await bot.wait_ready()
        await fake.wait_until(
            lambda: rows("select count(*) from jobs where delivered_at is not null")[0][0] == TOTAL,
            timeout=180,
        )
        # A duplicate post, if the bot were to make one, comes before it stops: stop it (Ctrl-C) and wait for
        # the process to end cleanly; after that nothing more can be posted.
        assert await bot.stop() == 0, bot.tail()
    except BaseException:
        print(bot.tail())
        raise
    finally:
        await bot.kill(signal.SIGKILL)

    jobs = rows("select id, state, result_message_id from jobs")
    assert len(jobs) == TOTAL and {state for _, state, _ in jobs} == {"done"}
    posted = Counter(
        a.filename.rsplit(".", 1)[0] for m in fake.messages if not m.deleted for a in m.attachments
        if a.filename.endswith((".png", ".webp", ".jpg"))
    )  # fmt: skip
    assert posted == Counter({job_id: 1 for job_id, _, _ in jobs}), posted
    by_id = {m.id: m for m in fake.messages}
    for job_id, _, message_id in jobs:
        assert any(a.filename.startswith(job_id) for a in by_id[message_id].attachments)
    assert rows("select count(*), count(distinct job_id), sum(images) from usage") == [
        (TOTAL, TOTAL, 2 * TOTAL)
    ]
    assert rows("select count(*) from images") == [(2 * TOTAL,)]
    if database_url is not None:  # the database password never reaches the bot's log
        assert password(database_url) and password(database_url) not in "\n".join(bot.log)
