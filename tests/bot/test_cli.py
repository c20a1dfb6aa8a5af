"""``python -m bot`` as a user runs it: the missing-token message, and a real start against the loopback
Discord that answers a typed /imagine with a PNG without the token ever reaching the logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "MODEL", "DATABASE_URL"))}
    env.update(extra)
    return env


def test_no_token_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0] and "discord.com/developers" in lines[0]


def test_bad_setting_names_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(ROOT), DISCORD_TOKEN="x", ENGINE_WORKERS="lots"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("Bad setting: ENGINE_WORKERS")


def test_import_bot_loads_no_torch_and_engine_loads_no_discord():
    code = (
        "import sys, bot.client, bot.__main__, bot.cogs.imagine._cog, bot.cogs.admin, bot.cogs.usage, "
        "bot.transport.nats, bot.metrics, bot.health, bot.charts; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch','diffusers','transformers')]; "
        "assert 'matplotlib' not in sys.modules"  # a second to import: only when a chart is drawn
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    code = (
        "import sys, engine.worker, engine.protocol, engine.nats_serve, engine.metrics, engine.logging_setup;"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('discord','sqlalchemy')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


async def test_python_m_bot_answers_imagine_on_loopback(fake_discord, tiny_model, tmp_path):
    guild = fake_discord.add_guild("Lighthouse Club")
    channel = fake_discord.add_channel(guild, "art")
    user = fake_discord.add_user("bob")
    fake_discord.add_member(guild, user)
    secret = fake_discord.token
    env = _env(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN=secret,
        DISCORD_API_BASE=fake_discord.api_base,
        DISCORD_GATEWAY_URL=fake_discord.gateway_url,
        MODEL=str(tiny_model),
        DEVICE="cpu",
        GUILD_IDS=str(guild.id),
        DEFAULT_SIZE="64",
        DEFAULT_STEPS="2",
        LOG_LEVEL="DEBUG",
    )
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            await fake_discord.wait_until(
                lambda: fake_discord.commands_for(guild) and fake_discord.connected, timeout=60
            )
            inter = await fake_discord.invoke(
                "imagine", {"prompt": "a lighthouse"}, guild=guild, channel=channel, user=user
            )
            message = await fake_discord.wait_for_message(
                lambda m: (
                    m.interaction_id == inter.id and any(a.filename.endswith(".png") for a in m.attachments)
                ),
                timeout=120,
            )
            assert message.attachments[0].data.startswith(b"\x89PNG")
            # discord.py calls on_ready (which logs the invite) once its guilds have arrived, up to 2 s after
            # the gateway's READY: a fast engine can post the picture before that.
            await fake_discord.wait_until(
                lambda: "invite me: " in log_path.read_text(errors="replace"), timeout=60
            )
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    output = log_path.read_text(errors="replace")
    assert "invite me: " in output and "scope=bot+applications.commands" in output
    assert secret not in output
    assert (tmp_path / "data" / "bot.db").is_file()  # the default DATABASE_URL, relative to where it runs
