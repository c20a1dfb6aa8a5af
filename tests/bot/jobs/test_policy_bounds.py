"""The bounds table (engine/bounds.py) as the inline flags, the limits and the policy read it."""

from __future__ import annotations

import random

import pytest

from bot.jobs import limits
from bot.jobs.limits import LimitName
from bot.jobs.policy import Defaults, Limits, Params, PolicyError, parse_flags, resolve
from engine import bounds


def _resolve(text: str, limits_: Limits | None = None):
    return resolve(parse_flags(text), Defaults(), limits_ or Limits(), rng=random.Random(1))


def test_inline_strength_below_the_minimum_is_refused() -> None:
    # The slash option has min 0.05; the inline flag used to skip it and reach the engine.
    with pytest.raises(PolicyError, match=r"Strength must be between 0\.05 and 1"):
        _resolve("a cat --strength 0.00000001")
    assert _resolve("a cat --strength 0.05").strength == 0.05


@pytest.mark.parametrize("flag", ["--strength 1.5", "--strength 0", "--strength -1"])
def test_strength_out_of_range_is_refused(flag: str) -> None:
    with pytest.raises(PolicyError, match="Strength"):
        _resolve(f"a cat {flag}")


def test_many_breaks_are_refused_with_the_limit() -> None:
    prompt = "cat" + " BREAK" * 249  # 1497 characters: under the character limit
    assert len(prompt) <= bounds.PROMPT_CHARS
    with pytest.raises(PolicyError, match=rf"249 `BREAK`s; the most is {bounds.PROMPT_CHUNKS - 1}"):
        resolve(Params(prompt=prompt), Defaults(), Limits())
    with pytest.raises(PolicyError, match="negative prompt has 20"):
        resolve(Params(prompt="cat", negative="x" + " BREAK" * 20), Defaults(), Limits())
    ok = "a BREAK" * (bounds.PROMPT_CHUNKS - 1)
    assert resolve(Params(prompt=ok), Defaults(), Limits()).prompt == ok


def test_a_guild_limit_never_lifts_past_the_table() -> None:
    # Limits built by hand (or from a stale database row) above the table still stop at the table.
    loose = Limits(max_steps=10_000, max_pixels=10**9, max_count=1000)
    with pytest.raises(PolicyError, match=f"between 1 and {bounds.STEPS.hi}"):
        _resolve(f"cat --steps {bounds.STEPS.hi + 1}", loose)
    with pytest.raises(PolicyError, match=f"between 1 and {bounds.COUNT.hi}"):
        _resolve(f"cat --count {bounds.COUNT.hi + 1}", loose)
    assert _resolve(f"cat --steps {bounds.STEPS.hi}", loose).steps == bounds.STEPS.hi


def test_cfg_bounds_come_from_the_table() -> None:
    with pytest.raises(PolicyError, match="CFG scale must be between 1 and 30"):
        _resolve("cat --cfg 31")
    with pytest.raises(PolicyError, match="CFG"):
        resolve(Params(prompt="cat", cfg=float("nan")), Defaults(), Limits())


def test_admin_limits_share_the_table() -> None:
    for name, bound in (
        (LimitName.MAX_STEPS, bounds.STEPS),
        (LimitName.MAX_PIXELS, bounds.PIXELS),
        (LimitName.MAX_COUNT, bounds.COUNT),
    ):
        spec = limits.SPECS[name]
        assert (spec.lo, spec.hi) == (bound.lo, bound.hi)
        with pytest.raises(PolicyError):
            spec.check(bound.hi + 1)


def test_img2img_schedule_is_bounded_whatever_the_strength() -> None:
    assert bounds.img2img_schedule(20, 0.75) == 20
    assert bounds.img2img_schedule(1, 0.05) == 20  # lengthened so one step runs
    for s in (0.05, 0.051, 0.07, 0.1, 0.33, 0.9999):
        n = bounds.img2img_schedule(1, s)
        assert int(n * s) >= 1 and n <= bounds.STEPS.hi
    with pytest.raises(ValueError, match="strength"):
        bounds.img2img_schedule(20, 1e-8)
    with pytest.raises(ValueError, match="steps"):
        bounds.img2img_schedule(bounds.STEPS.hi + 1, 1.0)
