"""Admission: may this member queue this job here, now? Every refusal is a :class:`PolicyError` whose
text names the limit, its value and, where there is one, when it resets.

Checks, in order: ban → img2img allowed → parameters within the member's limits → blocked terms →
global queue cap → the guild's share of it → queued_jobs → cooldown_seconds → daily_images.

The share: QUEUE_CAP divided by the guilds using the bot now (those with jobs queued, and those that
asked in the last :data:`GUILD_ACTIVE_WINDOW`, itself included; direct messages count as one guild), at
least 1. A guild alone may fill the queue; once another asks, the first takes no new job until it is
under its share, so the newcomer gets the next free place instead of being locked out.

Two fast commands from one user must not both slip under a quota: admission runs under a per-user
lock, and an admitted job holds a *reservation* (its id, its images) that counts against the quotas
until the job shows up in the database. The caller does not release anything: the next admission
for that user sees the job row and drops the reservation; one that never became a job (the caller
failed before submitting) expires after :data:`RESERVATION_TTL`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from bot.db.models import utcnow
from bot.db.moderation import ModerationStore, OverrideRow
from bot.jobs import blocklist, limits, policy
from bot.jobs.limits import Effective, LimitName, Override, Scope
from bot.jobs.manager import new_job_id
from engine.protocol import JobKind

if TYPE_CHECKING:
    from bot.settings import Settings

RESERVATION_TTL = dt.timedelta(seconds=60)
GUILD_ACTIVE_WINDOW = dt.timedelta(seconds=60)  # a guild that asked this recently counts for the share


def guild_share(queue_cap: int, active_guilds: int) -> int:
    """The most jobs one guild may have queued while ``active_guilds`` guilds use the bot."""
    return max(1, queue_cap // max(1, active_guilds))


class Requester(Protocol):
    """Who asks, and where (``bot.cogs.imagine._submit.Origin`` is one)."""

    @property
    def guild_id(self) -> int | None: ...
    @property
    def user_id(self) -> int: ...
    @property
    def role_ids(self) -> Sequence[int]: ...
    @property
    def nsfw_channel(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """An accepted request: use ``job_id`` for the job row, and these values for its columns."""

    job_id: str
    resolved: policy.Resolved
    width: int
    height: int
    limits: policy.Limits
    effective: Effective
    priority: int
    safety_check: bool


@dataclass(frozen=True, slots=True)
class _Reservation:
    user_id: int
    guild_id: int | None
    images: int
    at: dt.datetime


def defaults_from(settings: Settings) -> dict[LimitName, int]:
    """The settings-level defaults every guild starts from."""
    return {
        LimitName.DAILY_IMAGES: settings.default_daily_images,
        LimitName.QUEUED_JOBS: settings.default_queued_jobs,
        LimitName.COOLDOWN_SECONDS: settings.default_cooldown_seconds,
        LimitName.MAX_STEPS: settings.default_max_steps,
        LimitName.MAX_PIXELS: settings.default_max_pixels,
        LimitName.MAX_COUNT: settings.default_max_count,
        LimitName.ALLOW_IMG2IMG: int(settings.default_allow_img2img),
        LimitName.PRIORITY: 0,
    }


def overrides_of(rows: Sequence[OverrideRow]) -> list[Override]:
    """Database rows as limits.Override; a row naming a limit this version does not know is skipped."""
    out: list[Override] = []
    for row in rows:
        try:
            out.append(Override(Scope(row.scope), row.target_id, LimitName(row.name), row.value))
        except ValueError:
            continue
    return out


class Admission:
    def __init__(
        self,
        store: ModerationStore,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.defaults: Mapping[LimitName, int] = defaults_from(settings)
        self.queue_cap = settings.queue_cap
        self.safety_checker = bool(settings.safety_checker)
        self.clock = clock
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._reserved: dict[str, _Reservation] = {}
        self._asked: dict[int | None, dt.datetime] = {}  # guild -> its last admission that got to quotas

    def _lock(self, user_id: int) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def effective(self, guild_id: int | None, user_id: int, role_ids: Sequence[int] = ()) -> Effective:
        """A member's limits and where each comes from (for /limits show and /usage)."""
        rules = await self.store.rules(guild_id, user_id)
        return limits.resolve(
            self.defaults, overrides_of(rules.overrides), user_id=user_id, role_ids=role_ids
        )

    async def admit(
        self,
        who: Requester,
        params: policy.Params,
        defaults: policy.Defaults,
        *,
        kind: JobKind = JobKind.TXT2IMG,
        size: tuple[int, int] | None = None,
    ) -> Admitted:
        """Validate ``params`` against ``who``'s limits and quotas, and reserve the job; raise
        PolicyError with a message for the member on any refusal. Nothing is written to the database."""
        async with self._lock(who.user_id):
            rules = await self.store.rules(who.guild_id, who.user_id)
            if rules.ban is not None:
                reason = f" ({rules.ban.reason})" if rules.ban.reason else ""
                raise policy.PolicyError(
                    f"You are banned from making pictures in this server{reason}. "
                    "Ask a moderator if you think this is a mistake."
                )
            eff = limits.resolve(
                self.defaults, overrides_of(rules.overrides), user_id=who.user_id, role_ids=who.role_ids
            )
            if kind != JobKind.TXT2IMG and not eff[LimitName.ALLOW_IMG2IMG]:
                raise policy.PolicyError(
                    "Variations, upscales and picture prompts are turned off here (`allow_img2img` = no)."
                )
            lim = eff.policy_limits()
            # A server that lowers max_steps or max_count below the bot's defaults should still accept a
            # bare /imagine: the defaults shrink to fit instead of refusing what the member never asked.
            defaults = replace(
                defaults, steps=min(defaults.steps, lim.max_steps), count=min(defaults.count, lim.max_count)
            )
            resolved = policy.resolve(params, defaults, lim)
            width, height = size or (resolved.width, resolved.height)
            if width * height > lim.max_pixels:
                raise policy.PolicyError(
                    f"{width}×{height} is {width * height:,} pixels; the most here is {lim.max_pixels:,} "
                    "(`max_pixels`)."
                )
            await self._check_terms(resolved, rules.terms)
            now = self.clock()
            await self._check_quotas(who, eff, resolved.count, now)
            job_id = new_job_id()
            self._reserved[job_id] = _Reservation(who.user_id, who.guild_id, resolved.count, now)
            return Admitted(
                job_id=job_id,
                resolved=resolved,
                width=width,
                height=height,
                limits=lim,
                effective=eff,
                priority=eff[LimitName.PRIORITY],
                safety_check=self.safety_checker and not who.nsfw_channel,
            )

    @staticmethod
    async def _check_terms(resolved: policy.Resolved, raw_terms: Sequence[str]) -> None:
        if not raw_terms:
            return
        # Off the event loop and time-bounded (bot/jobs/blocklist.py): a check that cannot finish refuses.
        hit = await blocklist.CHECKER.find([resolved.prompt, resolved.negative], raw_terms)
        if hit is not None:
            label = ("prompt", "negative prompt")[hit.index]
            # A regex is shown by what it caught, not by its pattern; backticks would break the quoting.
            shown = (hit.matched if hit.term.is_regex else hit.term.raw).replace("`", "ˋ")
            raise policy.PolicyError(
                f"Your {label} contains `{shown[:60]}`, which this server's blocklist doesn't allow. "
                "Please rephrase it."
            )

    async def _check_quotas(self, who: Requester, eff: Effective, count: int, now: dt.datetime) -> None:
        self._reserved = {k: r for k, r in self._reserved.items() if now - r.at < RESERVATION_TTL}
        mine = {
            k: r for k, r in self._reserved.items() if r.user_id == who.user_id and r.guild_id == who.guild_id
        }
        activity = await self.store.activity(who.guild_id, who.user_id, limits.day_start(now), list(mine))
        for job_id in activity.known_job_ids:  # now a row: the database counts it from here on
            self._reserved.pop(job_id, None)
            mine.pop(job_id, None)
        pending = list(mine.values())

        # Asking counts even when refused: that is what shrinks a queue-filling guild's share.
        self._asked[who.guild_id] = now
        self._asked = {g: t for g, t in self._asked.items() if now - t < GUILD_ACTIVE_WINDOW}
        queued = activity.queued_total + len(pending)
        if queued >= self.queue_cap:
            raise policy.PolicyError(
                f"The queue is full right now ({queued:,} jobs waiting; the most is {self.queue_cap:,}). "
                "Please try again in a few minutes."
            )
        guilds = len(activity.queued_guilds | self._asked.keys())
        share, here = guild_share(self.queue_cap, guilds), activity.guild_queued + len(pending)
        if here >= share:
            whose = "This server's" if who.guild_id is not None else "The direct messages'"
            raise policy.PolicyError(
                f"{whose} share of the queue is full ({here:,} jobs waiting; {self.queue_cap:,} places are "
                f"shared by the {guilds:,} servers using the bot now). Please try again in a few minutes."
            )

        active, allowed = activity.active_jobs + len(pending), eff[LimitName.QUEUED_JOBS]
        if allowed == 0:
            raise policy.PolicyError("Making pictures is turned off for you here (`queued_jobs` = 0).")
        if active >= allowed:
            raise policy.PolicyError(
                f"You already have {active} job{'s' if active != 1 else ''} queued or running; the most here "
                f"is {allowed} (`queued_jobs`). Try again when one finishes, or cancel one."
            )

        cooldown = eff[LimitName.COOLDOWN_SECONDS]
        last = max(
            [t for t in [activity.last_job_at, *(r.at for r in pending)] if t is not None], default=None
        )
        if cooldown and last is not None:
            ready = last + dt.timedelta(seconds=cooldown)
            if now < ready:
                wait = max(1, round((ready - now).total_seconds()))
                raise policy.PolicyError(
                    f"Please wait {wait} s between jobs here (`cooldown_seconds` = {cooldown}); "
                    f"you can go again {limits.when(ready)}."
                )

        quota = eff[LimitName.DAILY_IMAGES]
        used = activity.images_today + activity.active_images + sum(r.images for r in pending)
        if used + count > quota:
            reset = limits.when(limits.next_daily_reset(now), daily=True)
            left = max(0, quota - used)
            if left == 0:
                raise policy.PolicyError(
                    f"You've used all {quota:,} of your images for today (`daily_images` = {quota:,}; "
                    f"queued jobs count too). It resets {reset}."
                )
            raise policy.PolicyError(
                f"That would make {count} images, but you have {left} of {quota:,} left today "
                f"(`daily_images`). Ask for `--count {left}`, or wait for the reset {reset}."
            )
