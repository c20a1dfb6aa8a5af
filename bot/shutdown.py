"""Stopping the bot in bounded time.

Ctrl-C or SIGTERM stops the bot in phases (``ImagineBot.close``): the JobManager and its engine workers
first (no new results), then the Discord connection (no more posting), then the database (nothing left to
write). Each phase has its own limit, past which the bot goes on without it, and the process as a whole has
one more: a watchdog armed when shutdown starts ends the process if anything still holds it (a task that
ignores cancellation, a thread that never returns) once ``PROCESS_LIMIT`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)

# Engine workers finish their current denoising step, send what is already rendered and exit; one that
# does not within WORKER_GRACE is killed (bot/transport/local.py), its jobs re-queued at the next start.
WORKER_GRACE = 8.0
ENGINE_LIMIT = WORKER_GRACE + 4.0  # the JobManager: workers, then its own tasks
DISCORD_LIMIT = 5.0  # cogs unloaded, gateway closed, HTTP session closed
DATABASE_LIMIT = 3.0
# From the signal to the end of the process, whatever is still running then. Below bench/load.py's 30 s
# wait for a clean exit.
PROCESS_LIMIT = 25.0

EXIT_FORCED = 3  # the watchdog ended the process: something did not stop in time (its log names it)


async def bounded(name: str, work: Awaitable[Any], limit: float) -> bool:
    """Run one shutdown phase for at most ``limit`` seconds; True if it finished cleanly.

    Past the limit the phase is cancelled and left behind (not awaited: a phase that ignores cancellation
    must not hold up the next one). Errors are logged, never raised: the next phase runs regardless."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=limit)
    elapsed = loop.time() - started
    if not done:
        task.cancel()
        log.warning("shutdown: %s did not finish in %.0f s; going on without it", name, limit)
        return False
    if task.cancelled():
        log.warning("shutdown: %s was cancelled after %.2f s", name, elapsed)
        return False
    exc = task.exception()
    if exc is not None:
        log.error("shutdown: %s failed after %.2f s", name, elapsed, exc_info=exc)
        return False
    log.info("shutdown: %s stopped in %.2f s", name, elapsed)
    return True


class Watchdog:
    """Ends the process ``limit`` seconds after ``arm()`` unless it has ended by then.

    A daemon thread, so a process that exits in time is not held by it; what it catches is what an event
    loop cannot: non-daemon threads joined at interpreter exit, a loop blocked by synchronous code."""

    def __init__(self, limit: float = PROCESS_LIMIT) -> None:
        self.limit = limit
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.limit, self._fire)
        self._timer.daemon = True
        self._timer.name = "shutdown-watchdog"
        self._timer.start()

    def _fire(self) -> None:
        holding = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        log.error(
            "shutdown did not finish within %.0f s; leaving now (threads still running: %s)",
            self.limit,
            ", ".join(holding),
        )
        force_exit(EXIT_FORCED)


def force_exit(code: int) -> None:
    """Leave at once (no interpreter teardown, which could wait on the very thing that hangs)."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a closed stream: nothing more to say anyway
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
