"""Fixtures for driving the real bot: a tiny model, settings, and the bot running against fakediscord."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.client import ImagineBot, point_at
from bot.db import Job
from bot.settings import Settings
from tests.bot.jobrows import new_job


@pytest.fixture
def make_job() -> Callable[..., Job]:
    """``make_job(user_id=2, steps=8, ...)``: a new job row (not saved), the one job factory of the tests."""
    return new_job


@pytest.fixture
def make_settings(tmp_path: Path, tiny_model: Path, fake_discord: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        env = {
            "DISCORD_TOKEN": fake_discord.token,
            "DISCORD_API_BASE": fake_discord.api_base,
            "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
            "OUTPUT_DIR": str(tmp_path / "images"),
            "MODEL": str(tiny_model),
            "DEVICE": "cpu",
            "DEFAULT_SIZE": "128",
            "DEFAULT_STEPS": "2",
            "PREVIEW_EVERY": "1",
            "ENGINE_PYTHON": os.environ.get("ENGINE_PYTHON", ""),  # tests/enginefork.py
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return Settings.from_env(env, env_file=None)

    return make


@pytest.fixture
def run_bot() -> Callable[[Settings], contextlib.AbstractAsyncContextManager[ImagineBot]]:
    """``async with run_bot(settings) as bot:`` — the real bot on fakediscord until the block ends."""

    @contextlib.asynccontextmanager
    async def run(settings: Settings) -> AsyncIterator[ImagineBot]:
        point_at(settings)
        bot = ImagineBot(settings)
        task = asyncio.create_task(bot.start(settings.discord_token.get()))
        try:
            ready = asyncio.create_task(bot.wait_until_ready())
            done, _ = await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # raises what stopped the bot
            assert ready in done, "bot did not become ready"
            yield bot
        finally:
            await bot.close()
            await asyncio.wait({task})  # not ``await task`` under suppress: that would swallow our own cancel
            if not task.cancelled():
                task.result()

    return run
