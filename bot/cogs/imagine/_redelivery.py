"""What a failed delivery means: how long the redelivery sweep waits before trying again (it backs off),
how many tries an error is worth, and the words that tell the author why their result never came.

Discord answers a refusal that will not change by itself (the channel is gone, the thread is locked) with
the same codes every time; trying those every minute forever only spends the bot's rate limit. A missing
permission may be fixed by an admin, so it gets a few tries; an outage (5xx, a timeout) gets many.
"""

from __future__ import annotations

import datetime as dt

import discord

SWEEP_INTERVAL = 60.0  # seconds between sweeps; also the first back-off step
MAX_BACKOFF = dt.timedelta(hours=6)

GONE_TRIES = 1  # the channel or thread is gone or locked: nothing to wait for
REFUSED_TRIES = 3  # any other 4xx (a missing permission): an admin may fix it within minutes
TRANSIENT_TRIES = 10  # 5xx, timeouts, our own errors: about a day of backing off

# 10003 Unknown Channel, 10004 Unknown Guild, 50083 thread archived, 160005 thread locked.
GONE_CODES = frozenset({10003, 10004, 50083, 160005})
THREAD_CODES = frozenset({50083, 160005})


def backoff(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failure: one sweep, then doubling, at most MAX_BACKOFF."""
    step = dt.timedelta(seconds=SWEEP_INTERVAL) * 2 ** min(max(attempts - 1, 0), 20)
    return min(step, MAX_BACKOFF)


def tries_allowed(exc: BaseException) -> int:
    """How many failed deliveries in all a job may have with this error before it is given up."""
    if isinstance(exc, discord.HTTPException):
        if exc.code in GONE_CODES:
            return GONE_TRIES
        if 400 <= exc.status < 500 and exc.status != 429:
            return REFUSED_TRIES
    return TRANSIENT_TRIES


def reason(exc: BaseException) -> str:
    """Why a result could not be posted, in words for its author (no paths, no internals)."""
    if isinstance(exc, discord.HTTPException):
        if exc.code in (10003, 10004):
            return "that channel no longer exists"
        if exc.code in THREAD_CODES:
            return "that thread is archived or locked"
        if exc.status == 403:
            return "I'm not allowed to post there (a permission is missing)"
        return f"Discord refused it (HTTP {exc.status}, code {exc.code})"
    return "something went wrong on my side"
