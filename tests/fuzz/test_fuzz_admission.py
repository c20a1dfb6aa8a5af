"""Admission, fuzzed on a real SQLite database through the real migrations: whatever limits an admin sets
and whatever a member types, in any order, each ask is refused with a clear message or admitted within the
member's limits, and the admitted jobs together stay within the quotas."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from bot.db import Database
from bot.db.moderation import ModerationStore
from bot.jobs import blocklist
from bot.jobs.admission import Admission
from bot.jobs.limits import SPECS, LimitName, Scope
from bot.jobs.policy import Defaults, PolicyError, parse_flags
from bot.settings import Settings
from engine import bounds
from engine.protocol import JobKind

from .strategies import assert_friendly, assert_prompt_bounded, typed_prompt

NOON = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)
ADMIN, USER = 1, 42


@dataclasses.dataclass(frozen=True)
class Who:
    guild_id: int
    user_id: int = USER
    role_ids: tuple[int, ...] = ()
    nsfw_channel: bool = False


def _limit(name: LimitName) -> st.SearchStrategy[int]:
    spec = SPECS[name]
    # Mostly small values, where quotas and caps are reached within a few asks.
    return st.one_of(st.integers(spec.lo, min(spec.hi, spec.lo + 8)), st.integers(spec.lo, spec.hi))


overrides = st.fixed_dictionaries({}, optional={n: _limit(n) for n in LimitName})
asks = st.lists(
    st.tuples(typed_prompt, st.sampled_from([JobKind.TXT2IMG, JobKind.IMG2IMG])), min_size=1, max_size=6
)


def test_admitted_jobs_stay_within_the_members_limits_and_quotas(tmp_path: Path) -> None:
    guilds = itertools.count(1000)
    settings_ = Settings.from_env({"DISCORD_TOKEN": "t"}, env_file=None)
    with asyncio.Runner() as loop:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
        loop.run(db.migrate())
        store = ModerationStore(db.sessions)

        @settings(max_examples=60)
        @given(overrides, asks)
        def admit_all(limits: dict[LimitName, int], asked: list[tuple[str, JobKind]]) -> None:
            guild = next(guilds)  # a guild of its own: examples do not share limits or reservations
            for name, value in limits.items():
                loop.run(store.set_limit(guild, Scope.GUILD, guild, name, value, actor_id=ADMIN))
            admission = Admission(store, settings_, clock=lambda: NOON)
            eff = loop.run(admission.effective(guild, USER))
            lim = eff.policy_limits()
            admitted_jobs = admitted_images = 0
            for text, kind in asked:
                try:
                    params = parse_flags(text)
                    admitted = loop.run(admission.admit(Who(guild), params, Defaults(), kind=kind))
                except PolicyError as exc:
                    assert_friendly(str(exc))
                    continue
                r = admitted.resolved
                assert_prompt_bounded(r.prompt)
                assert_prompt_bounded(r.negative)
                assert r.steps in bounds.STEPS and r.steps <= lim.max_steps <= bounds.STEPS.hi
                assert r.count in bounds.COUNT and r.count <= lim.max_count <= bounds.COUNT.hi
                assert admitted.width * admitted.height <= lim.max_pixels <= bounds.PIXELS.hi
                assert r.cfg in bounds.CFG and r.strength in bounds.STRENGTH and r.seed in bounds.SEED
                assert kind is JobKind.TXT2IMG or eff[LimitName.ALLOW_IMG2IMG]
                admitted_jobs += 1
                admitted_images += r.count
                # Reservations count until the job row exists: no run of asks gets past a quota.
                assert admitted_jobs <= eff[LimitName.QUEUED_JOBS]
                assert admitted_images <= eff[LimitName.DAILY_IMAGES]
                assert admitted_jobs <= 1 or eff[LimitName.COOLDOWN_SECONDS] == 0  # the clock stands still
            event(f"{admitted_jobs} of {len(asked)} admitted")

        try:
            admit_all()
        finally:
            loop.run(db.close())


blocked_word = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=15).filter(
    lambda t: "--" not in t and "—" not in t
)


def test_a_prompt_with_a_blocked_term_is_never_admitted(tmp_path: Path) -> None:
    """Terms go through the database and the blocklist checker as /blocklist add stores them; a prompt or
    negative holding one, anywhere, is refused (for it, or for another reason), never admitted."""
    guilds = itertools.count(5000)
    settings_ = Settings.from_env({"DISCORD_TOKEN": "t"}, env_file=None)
    with asyncio.Runner() as loop:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
        loop.run(db.migrate())
        store = ModerationStore(db.sessions)

        @settings(max_examples=80)
        @given(st.lists(blocked_word, min_size=1, max_size=3), typed_prompt, st.booleans(), st.data())
        def ask(terms: list[str], text: str, in_negative: bool, data: st.DataObject) -> None:
            guild = next(guilds)
            stored = []
            for raw in terms:
                try:
                    blocklist.compile_term(raw)  # what /blocklist add checks before storing
                except PolicyError as exc:
                    assert_friendly(str(exc))
                    continue
                loop.run(store.add_term(guild, raw, actor_id=ADMIN))
                stored.append(raw)
            if not stored:
                return
            term = data.draw(st.sampled_from(stored))
            try:
                params = parse_flags(text)
            except PolicyError:
                return
            if in_negative:
                params = dataclasses.replace(params, negative=f"{params.negative or ''} {term}")
            else:
                params = dataclasses.replace(params, prompt=f"{term} {params.prompt}")
            admission = Admission(store, settings_, clock=lambda: NOON)
            try:
                admitted = loop.run(admission.admit(Who(guild), params, Defaults()))
            except PolicyError as exc:
                assert_friendly(str(exc))
                event("refused")
                return
            raise AssertionError(f"admitted with {term!r} in it: {admitted.resolved}")

        try:
            ask()
        finally:
            loop.run(db.close())
