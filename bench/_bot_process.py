"""The bot under load as a process: its environment, its engine worker's CPU, its log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bench._load_config import ROOT, Config


def bot_env(cfg: Config, fake: Any, guild_id: int, workdir: Path, model: str) -> dict[str, str]:
    from bot.settings import SPECS

    # Start from this environment without any bot setting in it, so the shell cannot change the run.
    names = {s.name for s in SPECS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    if cfg.pin:
        env["OMP_NUM_THREADS"] = "1"  # torch in the engine worker: one thread on its one CPU
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        DIFFUSERS_VERBOSITY="error",
        ENGINE_LOG_LEVEL="WARNING",
        BENCH_PROBE_OUT=str(workdir / "probe.jsonl"),
        BENCH_PROBE_PROFILE=os.path.abspath(cfg.profile_bot) if cfg.profile_bot else "",
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        GUILD_IDS=str(guild_id),
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'bot.db'}",
        OUTPUT_DIR=str(workdir / "images"),
        LOG_LEVEL="WARNING",
        MODEL=model,
        DEVICE=cfg.device,
        DTYPE=cfg.dtype,
        ENGINE_MAX_BATCH=str(cfg.max_batch),
        DEFAULT_SIZE=str(cfg.size),
        DEFAULT_STEPS=str(cfg.steps),
        PREVIEW_EVERY=str(cfg.preview_every),
        # Room for the whole load: the benchmark measures speed, not the quotas.
        QUEUE_CAP=str(max(500, cfg.users * cfg.jobs + 10)),
        DEFAULT_QUEUED_JOBS=str(max(10, cfg.jobs + 1)),
        DEFAULT_DAILY_IMAGES=str(max(200, 2 * cfg.jobs * cfg.count + 10)),
        DEFAULT_COOLDOWN_SECONDS="0",
        DEFAULT_MAX_STEPS=str(max(50, cfg.steps)),
    )
    return env


async def pin_engine(bot_pid: int) -> None:
    """Move the bot's engine worker to CPU 1 (the bot spawns it at start, before it is ready)."""
    import psutil

    for _ in range(200):
        kids = psutil.Process(bot_pid).children(recursive=True)
        if kids:
            for kid in kids:
                kid.cpu_affinity([1])
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("--pin: the bot started no engine worker")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
