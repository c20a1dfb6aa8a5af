"""Per-guild limits: pure functions over plain data, tested without Discord or a database.

Resolution order (documented for admins in /limits show):

1. a **user** override in the guild wins outright;
2. else the member's **roles**: of the roles that set the limit, the *most permissive* value counts
   (the highest quota, the shortest cooldown), so giving someone an extra role never takes anything
   away from them;
3. else the **guild** override;
4. else the bot's default from settings (``DEFAULT_DAILY_IMAGES`` ...).

``priority`` is resolved the same way; it picks the fair queue's tier (higher runs first), which is how
an admin gives a role priority: ``/limits set setting:priority value:1 role:@Patrons``.

Daily quotas reset at 00:00 UTC. Blocked terms are :mod:`bot.jobs.blocklist`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from bot.jobs import policy
from engine import bounds


class LimitName(StrEnum):
    DAILY_IMAGES = "daily_images"
    QUEUED_JOBS = "queued_jobs"
    COOLDOWN_SECONDS = "cooldown_seconds"
    MAX_STEPS = "max_steps"
    MAX_PIXELS = "max_pixels"
    MAX_COUNT = "max_count"
    ALLOW_IMG2IMG = "allow_img2img"
    PRIORITY = "priority"


class Scope(StrEnum):
    GUILD = "guild"
    ROLE = "role"
    USER = "user"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    name: LimitName
    lo: int
    hi: int
    help: str
    lower_is_looser: bool = False  # cooldowns: a shorter wait is the more permissive value
    boolean: bool = False  # shown as yes/no, set with 1/0

    def check(self, value: int) -> int:
        """``value`` if it is in range, else a PolicyError an admin can act on."""
        if self.boolean and value not in (0, 1):
            raise policy.PolicyError(f"`{self.name}` is 1 (allowed) or 0 (not allowed), not {value}.")
        if not self.lo <= value <= self.hi:
            raise policy.PolicyError(
                f"`{self.name}` must be between {self.lo:,} and {self.hi:,} (you gave {value:,})."
            )
        return value

    def looser(self, a: int, b: int) -> int:
        return min(a, b) if self.lower_is_looser else max(a, b)

    def show(self, value: int) -> str:
        if self.boolean:
            return "yes" if value else "no"
        if self.name is LimitName.COOLDOWN_SECONDS:
            return f"{value:,} s"
        return f"{value:,}"


SPECS: Mapping[LimitName, LimitSpec] = {
    s.name: s
    for s in (
        LimitSpec(LimitName.DAILY_IMAGES, 0, 1_000_000, "images per member per day here (resets 00:00 UTC)"),
        LimitSpec(LimitName.QUEUED_JOBS, 0, 1_000, "jobs one member may have queued or running here"),
        LimitSpec(LimitName.COOLDOWN_SECONDS, 0, 86_400, "seconds between two jobs of one member", True),
        # The hard bounds an admin may set these within are engine/bounds.py's table.
        LimitSpec(LimitName.MAX_STEPS, bounds.STEPS.lo, bounds.STEPS.hi, "most sampling steps per job"),
        LimitSpec(
            LimitName.MAX_PIXELS, bounds.PIXELS.lo, bounds.PIXELS.hi, "most pixels per image (width × height)"
        ),
        LimitSpec(LimitName.MAX_COUNT, bounds.COUNT.lo, bounds.COUNT.hi, "most images per job"),
        LimitSpec(
            LimitName.ALLOW_IMG2IMG, 0, 1, "variations and upscales allowed (1) or not (0)", boolean=True
        ),
        LimitSpec(LimitName.PRIORITY, -10, 10, "queue priority; higher runs first (0: normal)"),
    )
}


@dataclass(frozen=True, slots=True)
class Override:
    scope: Scope
    target_id: int
    name: LimitName
    value: int


@dataclass(frozen=True, slots=True)
class Effective:
    """Every limit's value for one member, and where each came from (``default``, ``guild``, ...)."""

    values: Mapping[LimitName, int]
    sources: Mapping[LimitName, str]

    def __getitem__(self, name: LimitName) -> int:
        return self.values[name]

    def policy_limits(self) -> policy.Limits:
        return policy.Limits(
            max_steps=self.values[LimitName.MAX_STEPS],
            max_pixels=self.values[LimitName.MAX_PIXELS],
            max_count=self.values[LimitName.MAX_COUNT],
        )


def resolve(
    defaults: Mapping[LimitName, int],
    overrides: Iterable[Override],
    *,
    user_id: int | None = None,
    role_ids: Iterable[int] = (),
) -> Effective:
    """The effective limits for a member: user > most permissive role > guild > settings default."""
    roles = set(role_ids)
    guild: dict[LimitName, int] = {}
    user: dict[LimitName, int] = {}
    by_role: dict[LimitName, int] = {}
    for o in overrides:
        if o.scope is Scope.GUILD:
            guild[o.name] = o.value
        elif o.scope is Scope.USER and o.target_id == user_id:
            user[o.name] = o.value
        elif o.scope is Scope.ROLE and o.target_id in roles:
            prev = by_role.get(o.name)
            by_role[o.name] = o.value if prev is None else SPECS[o.name].looser(prev, o.value)
    values: dict[LimitName, int] = {}
    sources: dict[LimitName, str] = {}
    for name in LimitName:
        for source, table in (("user", user), ("role", by_role), ("guild", guild)):
            if name in table:
                values[name], sources[name] = table[name], source
                break
        else:
            values[name], sources[name] = defaults[name], "default"
    return Effective(values, sources)


# ------------------------------------------------------------------------------------------- time


def day_start(now: dt.datetime) -> dt.datetime:
    """00:00 UTC of ``now``'s day: the start of the daily quota window."""
    now = now.astimezone(dt.UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def next_daily_reset(now: dt.datetime) -> dt.datetime:
    return day_start(now) + dt.timedelta(days=1)


def month_start(now: dt.datetime) -> dt.datetime:
    return day_start(now).replace(day=1)


def when(moment: dt.datetime, *, daily: bool = False) -> str:
    """A reset time for a refusal: Discord renders ``<t:…:R>`` in the reader's own time zone ("in 3
    hours"); the UTC clock time next to it is there for logs and for readers whose client shows raw text."""
    stamp = int(moment.timestamp())
    if daily:
        return f"at 00:00 UTC (<t:{stamp}:R>)"
    return f"<t:{stamp}:R> (at {moment.astimezone(dt.UTC):%H:%M:%S} UTC)"
