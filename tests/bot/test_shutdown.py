"""Ctrl-C or SIGTERM stops the bot in bounded time, cleanly, with jobs in flight (bot/shutdown.py).

Liveness, not timing: each test waits for the process to end with a generous limit and asserts how it
ended (exit status 0, every shutdown phase finished, engine workers gone, nothing lost), never how fast.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from bot import shutdown
from bot.transport.local import LocalTransport, WorkerOptions
from tests.bot.botprocess import ROOT, BotProcess, bot_env, query
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals are POSIX")

PHASES = ("jobs and engine workers", "discord", "database")


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("group", id="ctrl-c-in-a-terminal"),  # SIGINT to the bot and its engine workers
        pytest.param("bot", id="sigint-to-the-bot-alone"),  # bench/load.py, a process manager
    ],
)
async def test_signal_with_jobs_in_flight_stops_the_bot_cleanly(fake_discord, tiny_model, tmp_path, how):
    fake = fake_discord
    guild = fake.add_guild("Stop Club")
    channel = fake.add_channel(guild, "art")
    users = [fake.add_user(f"artist{i}") for i in range(3)]
    for user in users:
        fake.add_member(guild, user)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = bot_env(fake, tmp_path, tiny_model, guild.id)
    env.update(DEFAULT_STEPS="40", DEFAULT_MAX_STEPS="50", DEFAULT_SIZE="128")  # long enough to be mid-job
    bot = BotProcess(env, workdir)
    try:
        await bot.start()
        await bot.wait_ready()
        for i, user in enumerate(users):
            inter = await fake.invoke(
                "imagine", {"prompt": f"tower {i}", "count": 2}, guild=guild, channel=channel, user=user
            )
            await inter.wait_response()
        await wait_until(
            lambda: query(tmp_path, "select count(*) from jobs where state = 'running'")[0][0] > 0,
            "a job to be running in the engine",
            timeout=180,
        )
        assert bot.proc is not None
        workers = psutil.Process(bot.proc.pid).children(recursive=True)
        assert workers, "the bot runs no engine worker"
        code = await bot.stop(signal.SIGINT, group=how == "group")
        log = "\n".join(bot.log)
        assert code == 0, bot.tail()
    finally:
        await bot.kill(signal.SIGKILL)
    for phase in PHASES:
        assert f"shutdown: {phase} stopped in" in log, bot.tail()
    assert "did not" not in log and "Traceback" not in log, bot.tail()  # no phase overran, none failed
    assert "KeyboardInterrupt" not in log  # the workers left the Ctrl-C to the bot
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    # Nothing lost: the jobs in flight are left to run at the next start, not failed.
    states = dict(query(tmp_path, "select state, count(*) from jobs group by state"))
    assert "failed" not in states and sum(states.values()) == 3, states


async def test_a_worker_still_loading_is_terminated_not_waited_for(tmp_path, caplog):
    # A worker reads no input until its model is loaded (minutes, on a first download), so Shutdown and
    # the end of its input go unheard: shutdown used to wait out the whole grace, then kill it. This
    # stand-in never reads its input at all.
    loading = tmp_path / "loading-worker"
    loading.write_text("#!/bin/sh\nexec sleep 3600\n")
    loading.chmod(0o755)
    transport = LocalTransport(WorkerOptions(model="unused", python=str(loading)), workers=2)
    await transport.start()
    procs = [w.proc for w in transport._workers]
    with caplog.at_level(logging.WARNING, logger="bot.transport.local"):
        await asyncio.wait_for(transport.close(grace=300), 120)  # far below the grace: not waited out
    assert [p.returncode for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]
    assert "did not stop" not in caplog.text


async def test_a_phase_past_its_bound_is_left_behind_and_the_next_one_runs(caplog):
    release = asyncio.Event()
    ran: list[str] = []

    async def stubborn() -> None:
        while not release.is_set():  # ignores cancellation, as a stuck close might
            try:
                await release.wait()
            except asyncio.CancelledError:
                ran.append("cancelled")

    async def failing() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        ran.append("next")

    with caplog.at_level(logging.INFO, logger="bot.shutdown"):
        assert await shutdown.bounded("stubborn", stubborn(), 0.05) is False
        assert await shutdown.bounded("failing", failing(), 5) is False
        assert await shutdown.bounded("fine", fine(), 5) is True
    assert ran == ["cancelled", "next"]
    assert "stubborn did not finish" in caplog.text and "failing failed" in caplog.text
    assert "fine stopped in" in caplog.text
    release.set()


def test_the_watchdog_ends_a_process_that_a_thread_holds():
    # A non-daemon thread that never returns holds a Python process at exit forever; the watchdog armed at
    # shutdown ends it with EXIT_FORCED, and says what was still running.
    script = textwrap.dedent(
        """
        import logging, threading, time
        from bot.shutdown import Watchdog
        logging.basicConfig()
        threading.Thread(target=time.sleep, args=(3600,), name="stuck-thread").start()
        Watchdog(0.5).arm()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == shutdown.EXIT_FORCED, proc.stderr
    assert "stuck-thread" in proc.stderr


def test_bounds_fit_inside_the_whole():
    assert shutdown.WORKER_GRACE < shutdown.ENGINE_LIMIT
    phases = shutdown.ENGINE_LIMIT + shutdown.DISCORD_LIMIT + shutdown.DATABASE_LIMIT
    assert phases < shutdown.PROCESS_LIMIT
