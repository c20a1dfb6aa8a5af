"""Pure limits: resolution order and reset times (blocklist matching: test_blocklist.py)."""

import datetime as dt

import pytest

from bot.jobs.limits import (
    SPECS,
    LimitName,
    Override,
    Scope,
    day_start,
    month_start,
    next_daily_reset,
    resolve,
    when,
)
from bot.jobs.policy import PolicyError

DEFAULTS = {
    LimitName.DAILY_IMAGES: 100,
    LimitName.QUEUED_JOBS: 5,
    LimitName.COOLDOWN_SECONDS: 30,
    LimitName.MAX_STEPS: 50,
    LimitName.MAX_PIXELS: 1024 * 1024,
    LimitName.MAX_COUNT: 4,
    LimitName.ALLOW_IMG2IMG: 1,
    LimitName.PRIORITY: 0,
}
GUILD, ROLE_A, ROLE_B, USER = 1, 10, 11, 100


def test_defaults_apply_without_overrides():
    eff = resolve(DEFAULTS, [], user_id=USER, role_ids=[ROLE_A])
    assert dict(eff.values) == DEFAULTS
    assert set(eff.sources.values()) == {"default"}
    assert eff.policy_limits().max_steps == 50


def test_user_beats_role_beats_guild_beats_default():
    overrides = [
        Override(Scope.GUILD, GUILD, LimitName.DAILY_IMAGES, 10),
        Override(Scope.ROLE, ROLE_A, LimitName.DAILY_IMAGES, 50),
        Override(Scope.USER, USER, LimitName.DAILY_IMAGES, 7),
        Override(Scope.GUILD, GUILD, LimitName.MAX_STEPS, 30),
        Override(Scope.ROLE, ROLE_A, LimitName.MAX_STEPS, 80),
    ]
    eff = resolve(DEFAULTS, overrides, user_id=USER, role_ids=[ROLE_A])
    assert (eff[LimitName.DAILY_IMAGES], eff.sources[LimitName.DAILY_IMAGES]) == (7, "user")
    assert (eff[LimitName.MAX_STEPS], eff.sources[LimitName.MAX_STEPS]) == (80, "role")
    other = resolve(DEFAULTS, overrides, user_id=999, role_ids=[])
    assert (other[LimitName.DAILY_IMAGES], other.sources[LimitName.DAILY_IMAGES]) == (10, "guild")
    assert other[LimitName.COOLDOWN_SECONDS] == 30


def test_most_permissive_role_wins_and_cooldown_takes_the_shortest():
    overrides = [
        Override(Scope.ROLE, ROLE_A, LimitName.DAILY_IMAGES, 20),
        Override(Scope.ROLE, ROLE_B, LimitName.DAILY_IMAGES, 200),
        Override(Scope.ROLE, ROLE_A, LimitName.COOLDOWN_SECONDS, 5),
        Override(Scope.ROLE, ROLE_B, LimitName.COOLDOWN_SECONDS, 60),
        Override(Scope.ROLE, 12, LimitName.DAILY_IMAGES, 10_000),  # a role this member lacks
    ]
    eff = resolve(DEFAULTS, overrides, user_id=USER, role_ids=[ROLE_A, ROLE_B])
    assert eff[LimitName.DAILY_IMAGES] == 200
    assert eff[LimitName.COOLDOWN_SECONDS] == 5


def test_a_role_override_can_be_stricter_than_the_guild():
    # Roles replace the guild value rather than combining with it: an admin can restrict a role.
    overrides = [
        Override(Scope.GUILD, GUILD, LimitName.ALLOW_IMG2IMG, 1),
        Override(Scope.ROLE, ROLE_A, LimitName.ALLOW_IMG2IMG, 0),
    ]
    assert resolve(DEFAULTS, overrides, user_id=USER, role_ids=[ROLE_A])[LimitName.ALLOW_IMG2IMG] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (LimitName.MAX_STEPS, 0),
        (LimitName.MAX_STEPS, 151),
        (LimitName.ALLOW_IMG2IMG, 2),
        (LimitName.DAILY_IMAGES, -1),
        (LimitName.MAX_PIXELS, 10**12),
    ],
)
def test_out_of_range_values_are_refused_with_the_range(name, value):
    with pytest.raises(PolicyError, match=name.value):
        SPECS[name].check(value)


def test_daily_reset_is_midnight_utc():
    now = dt.datetime(2026, 3, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert day_start(now) == dt.datetime(2026, 3, 31, tzinfo=dt.UTC)
    assert next_daily_reset(now) == dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert month_start(now) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    # A clock in another zone still resets at UTC midnight.
    tokyo = dt.timezone(dt.timedelta(hours=9))
    assert next_daily_reset(dt.datetime(2026, 4, 1, 8, 0, tzinfo=tokyo)) == dt.datetime(
        2026, 4, 1, tzinfo=dt.UTC
    )
    text = when(next_daily_reset(now), daily=True)
    assert "00:00 UTC" in text and f"<t:{int(dt.datetime(2026, 4, 1, tzinfo=dt.UTC).timestamp())}:R>" in text
