"""A restart loses nothing: the bot (and its engine workers) killed with SIGKILL while 20 jobs are queued
or running, then started again, posts every result exactly once and counts each job once.

The bot runs as a real ``python -m bot`` subprocess, in its own process group so one ``killpg`` takes
its engine workers down with it; the loopback Discord runs in this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = 4
JOBS_PER_USER = 5
TOTAL = USERS * JOBS_PER_USER

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")


class BotProcess:
    """``python -m bot`` with its own process group; its log is kept for a failing test's report."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot",
            cwd=self.cwd, env=self.env, start_new_session=True,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if "logged in as" in line:
                self.ready.set()

    async def wait_ready(self, limit: float = 60) -> None:
        assert self.proc is not None
        waiter = asyncio.create_task(self.ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        exited.cancel()
        if waiter not in done:
            raise AssertionError("bot did not log in:\n" + self.tail())

    async def kill(self, sig: int = signal.SIGKILL, grace: float = 20) -> None:
        """Signal the whole process group (bot and engine workers) and wait for the bot to exit."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5)
        # Engine workers left behind would hold the GPU/CPU and the database: take the group down for sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log[-lines:])


def bot_env(fake, tmp_path: Path, model: Path, guild_id: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "DEFAULT_", "ENGINE_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        GUILD_IDS=str(guild_id),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        OUTPUT_DIR=str(tmp_path / "images"),
        MODEL=str(model),
        DEVICE="cpu",
        ENGINE_MAX_BATCH="4",
        DEFAULT_STEPS="2",
        DEFAULT_SIZE="64",
        PREVIEW_EVERY="0",
        LOG_LEVEL="INFO",
    )
    return env


def query(tmp_path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(tmp_path / "bot.db", timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_sigkill_with_20_jobs_in_flight_then_restart_posts_each_exactly_once(
    fake_discord, tiny_model, tmp_path
):
    fake = fake_discord
    guild = fake.add_guild("Restart Club")
    channel = fake.add_channel(guild, "art")
    users = [fake.add_user(f"artist{i}") for i in range(USERS)]
    for user in users:
        fake.add_member(guild, user)
    workdir = tmp_path / "cwd"  # no stray .env from the developer's checkout
    workdir.mkdir()
    bot = BotProcess(bot_env(fake, tmp_path, tiny_model, guild.id), workdir)
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
        await fake.wait_until(lambda: len(query(tmp_path, "select id from jobs")) == TOTAL, timeout=30)

        # Kill mid-run: as soon as the first result is out (the moment a result is on Discord but perhaps
        # not yet recorded as delivered), while most jobs are still waiting or running.
        def first_result() -> bool:
            return any(a.filename.endswith(".png") for m in fake.messages for a in m.attachments)

        await fake.wait_until(first_result, timeout=120)
        await bot.kill(signal.SIGKILL)
        unfinished = query(tmp_path, "select count(*) from jobs where delivered_at is null")[0][0]
        assert unfinished >= TOTAL // 2, f"only {unfinished} jobs were left to recover"

        await bot.start()
        await bot.wait_ready()
        await fake.wait_until(
            lambda: (
                query(tmp_path, "select count(*) from jobs where delivered_at is not null")[0][0] == TOTAL
            ),
            timeout=180,
        )
        await asyncio.sleep(1.0)  # a duplicate post, if the bot were to make one, would land now
    except BaseException:
        print(bot.tail())
        raise
    finally:
        await bot.kill(signal.SIGINT)

    jobs = query(tmp_path, "select id, state, result_message_id from jobs")
    assert len(jobs) == TOTAL and {state for _, state, _ in jobs} == {"done"}
    posted = Counter(
        a.filename.rsplit(".", 1)[0] for m in fake.messages if not m.deleted for a in m.attachments
        if a.filename.endswith((".png", ".webp", ".jpg"))
    )  # fmt: skip
    assert posted == Counter({job_id: 1 for job_id, _, _ in jobs}), posted
    by_id = {m.id: m for m in fake.messages}
    for job_id, _, message_id in jobs:
        assert any(a.filename.startswith(job_id) for a in by_id[message_id].attachments)
    assert query(tmp_path, "select count(*), count(distinct job_id), sum(images) from usage") == [
        (TOTAL, TOTAL, 2 * TOTAL)
    ]
    assert query(tmp_path, "select count(*) from images") == [(2 * TOTAL,)]
