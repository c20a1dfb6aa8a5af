"""``python -m bench._botprobe``: the real bot (``python -m bot``) with two timing probes, for bench/load.py.

The database gives when a job was queued and dispatched, and the loopback Discord when its reply and result
were posted; what neither sees is when the engine handed a result back. This wraps
``JobManager._on_engine_event`` to write, for each engine event about a job, the wall-clock time it reached
the bot's JobManager, and it samples the bot's event-loop lag (how late a 10 ms sleep wakes up): a bot that
blocks its loop (synchronous work on the hot path) shows up there. The bot's code is unchanged; only a
timestamp is written per event (one short line to a file, line-buffered so a killed bot keeps them).

Output (``BENCH_PROBE_OUT``), JSON lines::

    {"t": 1700000000.123, "e": "JobDone", "job": "ab12...", "engine_seconds": 0.42, "sql": 640, "commits": 52}
    {"t": ..., "e": "lag", "max_ms": 3.1, "p50_ms": 0.2, "sql": 812, "commits": 230}   # once a second

``sql`` and ``commits`` count, since the start, the statements and commits the bot's database ran (written on
every line, so bench/load.py can take the difference over its timed window).

With ``BENCH_PROBE_PROFILE=PATH`` the bot runs under cProfile and the stats go to PATH when it stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import IO, Any

LAG_TICK = 0.01


_COUNTS = {"sql": 0, "commits": 0}  # statements and commits the bot's database engine has run


def _install(out: IO[str]) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from bot.jobs.manager import JobManager
    from engine import protocol

    def count_sql(*_args: Any) -> None:
        _COUNTS["sql"] += 1

    def count_commit(*_args: Any) -> None:
        _COUNTS["commits"] += 1

    # Class-level listeners: they see the bot's engine, created later in ImagineBot.__init__.
    event.listen(Engine, "before_cursor_execute", count_sql)
    event.listen(Engine, "commit", count_commit)

    job_events = (protocol.JobStarted, protocol.JobDone, protocol.JobFailed, protocol.JobCancelled)
    original_start = JobManager.start
    original = JobManager._on_engine_event
    lag_task: list[asyncio.Task[None]] = []

    async def start(self: JobManager) -> None:
        lag_task.append(asyncio.create_task(_lag_loop(out)))  # runs in the bot's loop from its start on
        await original_start(self)

    async def on_engine_event(self: JobManager, event: protocol.Event) -> None:
        if isinstance(event, job_events):
            record: dict[str, Any] = {
                "t": time.time(),
                "e": type(event).__name__,
                "job": event.job_id,
                **_COUNTS,
            }
            if isinstance(event, protocol.JobDone):
                record["engine_seconds"] = event.engine_seconds
                record["images"] = len(event.images)
            out.write(json.dumps(record) + "\n")
        await original(self, event)

    JobManager.start = start  # type: ignore[method-assign]  # the probe wraps the bot's own methods
    JobManager._on_engine_event = on_engine_event  # type: ignore[method-assign]  # (timestamps only)


async def _lag_loop(out: IO[str]) -> None:
    lags: list[float] = []
    window_end = time.monotonic() + 1.0
    while True:
        before = time.monotonic()
        await asyncio.sleep(LAG_TICK)
        lags.append(max(0.0, time.monotonic() - before - LAG_TICK))
        if time.monotonic() >= window_end:
            lags.sort()
            out.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "e": "lag",
                        "max_ms": round(lags[-1] * 1000, 2),
                        "p50_ms": round(lags[len(lags) // 2] * 1000, 2),
                        **_COUNTS,
                    }
                )
                + "\n"
            )
            lags.clear()
            window_end = time.monotonic() + 1.0


def main() -> None:
    path = os.environ.get("BENCH_PROBE_OUT")
    if path:
        out = open(path, "a", buffering=1, encoding="utf-8")  # open as long as the bot runs
        _install(out)
    from bot.__main__ import main as bot_main

    profile = os.environ.get("BENCH_PROBE_PROFILE")
    if not profile:
        bot_main()
        return
    # Where the bot's CPU goes (bench.load --profile-bot): pstats written when the bot stops (SIGINT).
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(bot_main)
    finally:
        profiler.dump_stats(profile)


if __name__ == "__main__":
    main()
