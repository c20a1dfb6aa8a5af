"""The bot as a real ``python -m bot`` subprocess against the loopback Discord, for tests that stop, kill
or restart it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

from tests.enginefork import engine_python

ROOT = Path(__file__).resolve().parents[2]


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
            await asyncio.wait({self._reader}, timeout=5)  # its output is in self.log either way
        # Engine workers left behind would hold the GPU/CPU and the database: take the group down for sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def stop(self, sig: int = signal.SIGINT, limit: float = 120, *, group: bool = True) -> int:
        """Ctrl-C (SIGINT to the whole process group, as a terminal sends it; to the bot alone with
        ``group=False``) and the bot's exit status once it has exited. ``limit`` is generous: a liveness
        bound, far above the bot's own shutdown bound (bot/shutdown.py); a bot still running then is
        killed and this raises."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), limit)
        except TimeoutError:
            await self.kill(signal.SIGKILL)
            raise AssertionError(
                f"the bot did not exit within {limit:.0f} s of the signal:\n{self.tail()}"
            ) from None
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=5)  # its output is in self.log either way
        return code

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log[-lines:])


def bot_env(
    fake, tmp_path: Path, model: Path, guild_id: int, database_url: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "DEFAULT_", "ENGINE_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        GUILD_IDS=str(guild_id),
        DATABASE_URL=database_url or f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        OUTPUT_DIR=str(tmp_path / "images"),
        MODEL=str(model),
        DEVICE="cpu",
        ENGINE_MAX_BATCH="4",
        DEFAULT_STEPS="2",
        DEFAULT_SIZE="64",
        PREVIEW_EVERY="0",
        LOG_LEVEL="INFO",
        ENGINE_PYTHON=engine_python(),  # workers forked from a warm process (tests/enginefork.py)
    )
    return env


def query(tmp_path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(tmp_path / "bot.db", timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
