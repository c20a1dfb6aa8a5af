"""The load itself: the loopback Discord, the bot, U users typing /imagine, and the bot's clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._bot_process import bot_env, pin_engine, tail
from bench._bot_records import read_probe
from bench._discord import TimedFakeDiscord
from bench._load_config import JOB_ID, PROMPTS, Config, StackRun, Typed
from bench._stats import RssSampler
from bot.shutdown import PROCESS_LIMIT


async def run_stack(cfg: Config, model: str, workdir: Path) -> StackRun:
    fake = TimedFakeDiscord()
    await fake.start()
    guild = fake.add_guild("Bench")
    channel = fake.add_channel(guild, "bench")
    users = [fake.add_user(f"user{i:03d}") for i in range(cfg.users)]
    for user in users:
        fake.add_member(guild, user)
    warm_user = fake.add_user("warmup")
    fake.add_member(guild, warm_user)

    if cfg.pin:
        os.sched_setaffinity(0, {0})  # inherited by the bot; its engine worker is moved to CPU 1 below
    log_path = workdir / "bot.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._botprobe",
        cwd=workdir,
        env=bot_env(cfg, fake, guild.id, workdir, model),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sampler = RssSampler(proc.pid)
    sampler.start()
    typed: list[Typed] = []
    seed_base = 1000

    async def imagine(user: Any, seed: int, prompt: str) -> Any:
        options = {"prompt": prompt, "seed": seed, "count": cfg.count}
        return await fake.invoke("imagine", options, guild=guild, channel=channel, user=user)

    def finished(interaction_id: int) -> bool:
        """A result picture was posted for it, or it got a final answer without one (refused, failed)."""
        inter = fake.interactions[interaction_id]
        msg = inter.original
        if msg is None:
            return inter.late
        if any(JOB_ID.fullmatch(a.filename.rpartition(".")[0]) for a in msg.attachments):
            return True
        return inter.ephemeral or "❌" in msg.content or "🚫" in msg.content

    async def user_loop(u: int, user: Any) -> None:
        if cfg.think_ms > 0:  # spread the users over one think time, so that they do not type in lockstep
            await asyncio.sleep(u * cfg.think_ms / 1000 / max(1, cfg.users))
        for j in range(cfg.jobs):
            n = u * cfg.jobs + j
            t_typed = time.time()
            inter = await imagine(user, seed_base + n * cfg.count, f"{PROMPTS[n % len(PROMPTS)]}, job {n}")
            record = Typed(u, j, inter.id, t_typed)
            typed.append(record)
            with contextlib.suppress(TimeoutError):
                await inter.wait_response(timeout=30)
            record.late = inter.late
            if cfg.think_ms > 0:
                await asyncio.sleep(cfg.think_ms / 1000)

    bot_exit: int | None = None
    warm: list[int] = []
    cpu_used: tuple[float, float, float] | None = None
    rest_calls: list[tuple[str, str, int]] = []
    try:
        try:
            await fake.wait_until(lambda: fake.connected and bool(fake.commands_for(guild)), timeout=120)
            if cfg.pin:
                await pin_engine(proc.pid)
            # Untimed jobs first, one at a time: the first waits for the engine worker to load its model,
            # and the engine's first calls are slow (allocator, kernel selection).
            for i in range(max(1, cfg.warmup)):
                inter = await imagine(warm_user, 1 + i, f"warmup {i}")
                warm.append(inter.id)
                await fake.wait_until(lambda: finished(warm[-1]), timeout=300)
        except TimeoutError as exc:
            raise RuntimeError(f"the bot did not come up: {exc}\n{tail(log_path)}") from None
        cpu_before = sampler.cpu_seconds()
        rest_before = len(fake.requests)
        t_start = time.time()
        await asyncio.gather(*(user_loop(u, user) for u, user in enumerate(users)))
        with contextlib.suppress(TimeoutError):
            await fake.wait_until(lambda: all(finished(t.interaction_id) for t in typed), timeout=cfg.timeout)
        t_end = max([t_start, *(min(p.values()) for p in fake.result_posts.values())])
        cpu_after = sampler.cpu_seconds()
        rest_calls = list(fake.requests[rest_before:])
        if cpu_before is not None and cpu_after is not None:
            cpu_used = (
                cpu_after[0] - cpu_before[0],
                cpu_after[1] - cpu_before[1],
                cpu_after[2] - cpu_before[2],
            )
        # The per-job SQL counts end at the probe's first line after the load (its once-a-second lag line):
        # wait for it before stopping the bot, or a load shorter than a second has no end point.
        probe_path = workdir / "probe.jsonl"
        with contextlib.suppress(TimeoutError):
            await fake.wait_until(
                lambda: any(r["t"] >= t_end and "sql" in r for r in read_probe(probe_path)), timeout=5
            )
    finally:
        sampler.stop()
        if proc.returncode is None:
            # The bot's clean shutdown (bounded: bot/shutdown.py). Duplicates are counted after it: a result
            # posted twice is out before the bot exits, so no wait "for a duplicate to land" is needed.
            proc.send_signal(signal.SIGINT)
            try:
                bot_exit = await asyncio.wait_for(proc.wait(), PROCESS_LIMIT + 10)
            except TimeoutError:
                proc.kill()
                bot_exit = await proc.wait()
        log.close()
        late = sum(1 for i in fake.interactions.values() if i.late)
        await fake.stop()
    return StackRun(
        typed=typed,
        warmup_interactions=warm,
        t_start=t_start,
        t_end=t_end,
        first_reply=dict(fake.first_reply),
        result_posts={k: dict(v) for k, v in fake.result_posts.items()},
        rss=sampler,
        workdir=workdir,
        bot_exit=bot_exit,
        interactions_late=late,
        cpu_seconds=cpu_used,
        rest_calls=rest_calls,
        probe=read_probe(workdir / "probe.jsonl"),
    )
