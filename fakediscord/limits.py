"""Network realism knobs of the fake: latency, rate-limit buckets, and the invalid-request count that gets
real clients banned.

- :class:`Latency`: seconds each REST call (per route class) and each attachment (CDN) download waits
  before it is handled. The wait happens before the server looks at the request, so a late interaction
  callback is late by the server's clock, as on Discord.
- :class:`RateLimits`: a fixed-window bucket per route and major parameter (channel, guild, webhook
  token, interaction), answered with Discord's ``X-RateLimit-*`` headers and, once exceeded, 429 with
  ``retry_after`` (and ``Via``, so discord.py waits and retries).
- :class:`InvalidRequests`: 401, 403 and 429 answers. Discord bans (Cloudflare, 429 without ``Via``)
  a client passing 10,000 of them in 10 minutes; the fake does the same at ``limit``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

# Route classes a latency can be set for (the attribute names of Latency other than rest/cdn).
ROUTE_CLASSES = (
    "interactions",
    "webhooks",
    "messages",
    "reactions",
    "threads",
    "channels",
    "guilds",
    "commands",
    "users",
)


@dataclass(slots=True)
class Latency:
    """``rest``: every REST call; a route class set here (not None) replaces it for its routes.
    ``cdn``: attachment downloads. Change any of them at any time during a test.

    Route classes: ``interactions`` (the callback), ``webhooks`` (followups, @original get/edit/delete),
    ``messages``, ``reactions``, ``threads``, ``channels``, ``guilds``, ``commands``, ``users``.
    (slots: a misspelt class name raises AttributeError instead of silently doing nothing.)"""

    rest: float = 0.0
    cdn: float = 0.0
    interactions: float | None = None
    webhooks: float | None = None
    messages: float | None = None
    reactions: float | None = None
    threads: float | None = None
    channels: float | None = None
    guilds: float | None = None
    commands: float | None = None
    users: float | None = None

    def for_route(self, route_class: str) -> float:
        own = getattr(self, route_class, None) if route_class in ROUTE_CLASSES else None
        return self.rest if own is None else own


@dataclass
class BucketSpec:
    limit: int
    per: float  # seconds in one window


@dataclass
class _Window:
    used: int = 0
    resets_at: float = 0.0  # time.monotonic()


@dataclass
class Verdict:
    """What a bucket says about one request: the headers to send, and whether to refuse it (429)."""

    headers: dict[str, str]
    retry_after: float | None = None


@dataclass
class RateLimits:
    """Per-route buckets. ``default`` applies to every route not given its own with :meth:`set`; it is
    generous (Discord's global 50/s) so tests not about rate limits never wait. Routes are named
    ``"METHOD /path/{param}"`` as the fake registers them, e.g. ``"POST /channels/{channel_id}/messages"``
    or ``"PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"``; ``known_routes``
    lists them once the fake has started."""

    default: BucketSpec = field(default_factory=lambda: BucketSpec(50, 1.0))
    routes: dict[str, BucketSpec] = field(default_factory=dict)
    known_routes: set[str] = field(default_factory=set)
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)

    def set(self, route: str, limit: int, per: float) -> None:
        """Give ``route`` its own bucket: ``limit`` requests per ``per`` seconds, per major parameter."""
        if self.known_routes and route not in self.known_routes:
            raise ValueError(f"no route {route!r}; known: {sorted(self.known_routes)}")
        if limit < 1 or per <= 0:
            raise ValueError("a bucket needs limit >= 1 and per > 0")
        self.routes[route] = BucketSpec(limit, per)
        self._windows = {k: w for k, w in self._windows.items() if k[0] != route}

    def hit(self, route: str, major: str) -> Verdict:
        """Count one request against its bucket."""
        spec = self.routes.get(route, self.default)
        now = time.monotonic()
        window = self._windows.setdefault((route, major), _Window())
        if now >= window.resets_at:
            window.used, window.resets_at = 0, now + spec.per
        window.used += 1
        reset_after = max(window.resets_at - now, 0.001)
        headers = {
            "X-RateLimit-Limit": str(spec.limit),
            "X-RateLimit-Remaining": str(max(spec.limit - window.used, 0)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(route.encode()).hexdigest()[:16],
        }
        if window.used <= spec.limit:
            return Verdict(headers)
        headers.update(
            {
                "X-RateLimit-Scope": "user",
                "Retry-After": str(math.ceil(reset_after)),
                "Via": "1.1 google",  # discord.py treats a 429 without Via as a Cloudflare ban
            }
        )
        return Verdict(headers, reset_after)


@dataclass
class InvalidRequests:
    """Every 401/403/429 answer, and Discord's ban for too many of them in ``window`` seconds."""

    limit: int = 10_000
    window: float = 600.0
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    _times: deque[float] = field(default_factory=deque)

    @property
    def count(self) -> int:
        return len(self.log)

    def record(self, method: str, path: str, status: int) -> None:
        self.log.append((method, path, status))
        self._times.append(time.monotonic())

    def banned(self) -> bool:
        cutoff = time.monotonic() - self.window
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        return len(self._times) >= self.limit
