"""``LOG_FORMAT=json`` through ``python -m bot``: every line on stderr is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_python_m_bot_logs_json_lines(fake_discord, tmp_path):
    wrong = "not-the-token.abc.def"  # Discord refuses it: the bot logs why and exits 1
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "LOG_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN=wrong,
        DISCORD_API_BASE=fake_discord.api_base,
        DISCORD_GATEWAY_URL=fake_discord.gateway_url,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        ENGINE_TRANSPORT="nats",  # nothing to start: the login fails first
        LOG_FORMAT="json",
        DEFAULT_SAMPLER="Euler",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    text = err.decode()
    lines = [json.loads(line) for line in text.splitlines()]
    refused = [line for line in lines if "Discord refused DISCORD_TOKEN" in line["message"]]
    assert refused and refused[0]["level"] == "ERROR" and refused[0]["logger"] == "bot"
    assert wrong not in text
