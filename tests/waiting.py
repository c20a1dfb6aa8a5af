"""Waiting in tests: on a condition, never on the clock.

``wait_until`` returns as soon as its condition holds and raises when it does not within the timeout, so a
test never passes by running out of time (a loop that just stops polling would). The timeout is a
generous limit on a liveness property, not a measurement: on a slow machine a test waits longer, it does
not fail. To show that something does NOT happen, wait for what would follow it (a later job's result, the
process's exit), never for a fixed time.

The loopback Discord has its own ``fake_discord.wait_until`` (woken by every change to its world); this
one is for everything else: the bot's state, a transport, a database row.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT = 60.0


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a deadline on a condition, not on a call
    poll: float = 0.02,
) -> None:
    """Return once ``condition()`` is true (it may be a coroutine function); raise ``TimeoutError`` naming
    ``what`` if it is still false after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"still waiting after {timeout:.0f} s for {what}")
        await asyncio.sleep(poll)
