import random
import re

import pytest

from bot.jobs.policy import Defaults, Limits, Params, PolicyError, aspect_size, parse_flags, resolve


def test_flags_split_off_the_prompt():
    p = parse_flags("a lighthouse at dusk --ar 16:9 --seed 42 --no fog, boats --steps 30 --cfg 6.5")
    assert p.prompt == "a lighthouse at dusk"
    assert p.aspect == "16:9"
    assert p.seed == 42
    assert p.negative == "fog, boats"
    assert p.steps == 30
    assert p.cfg == 6.5


def test_sampler_flag_takes_spaces_and_count_alias():
    p = parse_flags("cat --sampler DPM++ 2M Karras --n 2")
    assert p.sampler == "DPM++ 2M Karras"
    assert p.count == 2


def test_no_flags_keeps_double_dash_inside_words():
    assert parse_flags("a well--lit room").prompt == "a well--lit room"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cat --stylize 100", "--stylize"),
        ("cat --seed", "--seed"),
        ("cat --seed abc", "--seed"),
        ("cat --cfg x", "--cfg"),
        ("cat --seed 1 --seed 2", "twice"),
        ("cat --cfg nan", "--cfg"),
    ],
)
def test_bad_flags_name_the_flag(text, needle):
    with pytest.raises(PolicyError, match=needle.replace("-", r"\-")):
        parse_flags(text)


def test_options_win_over_flags():
    flags = parse_flags("cat --seed 1 --steps 10")
    merged = Params(prompt=flags.prompt, seed=99).merged_over(flags)
    assert merged.seed == 99
    assert merged.steps == 10


@pytest.mark.parametrize("aspect", ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9"])
def test_aspects_are_multiples_of_64_near_native_pixels(aspect):
    w, h = aspect_size(aspect, 512)
    assert w % 64 == 0 and h % 64 == 0
    assert 0.8 < (w * h) / (512 * 512) < 1.2
    aw, ah = map(int, aspect.split(":"))
    assert abs(w / h - aw / ah) / (aw / ah) < 0.15


def test_resolve_fills_defaults_and_checks_limits():
    r = resolve(Params(prompt="cat"), Defaults(), Limits(), rng=random.Random(1))
    assert (r.width, r.height, r.steps, r.count) == (512, 512, 20, 4)
    assert (r.sampler, r.scheduler, r.clip_skip) == ("DPM++ 2M", "Karras", 0)  # the default DPM++ 2M Karras
    assert 0 <= r.seed < 2**32
    with pytest.raises(PolicyError, match="Steps must be between 1 and 50"):
        resolve(Params(prompt="cat", steps=51), Defaults(), Limits(max_steps=50))
    with pytest.raises(PolicyError, match="pixels"):
        resolve(Params(prompt="cat", aspect="16:9"), Defaults(size=1024), Limits(max_pixels=512 * 512))
    with pytest.raises(PolicyError, match="Unknown sampler"):
        resolve(Params(prompt="cat", sampler="Fastest"), Defaults(), Limits())
    with pytest.raises(PolicyError, match="empty"):
        resolve(Params(prompt="   "), Defaults(), Limits())
    with pytest.raises(PolicyError, match="characters"):
        resolve(Params(prompt="x" * 5000), Defaults(), Limits())


def test_sampler_names_match_case_insensitively():
    r = resolve(Params(prompt="cat", sampler="euler A"), Defaults(), Limits())
    assert r.sampler == "Euler a"


def test_scheduler_and_clip_skip_flags():
    p = parse_flags("cat --scheduler SGM Uniform --clip-skip 2")
    assert (p.prompt, p.scheduler, p.clip_skip) == ("cat", "SGM Uniform", 2)
    assert parse_flags("cat --schedule karras --clipskip 1").scheduler == "karras"
    r = resolve(p.merged_over(Params()), Defaults(), Limits())
    assert (r.sampler, r.scheduler, r.clip_skip) == ("DPM++ 2M", "SGM Uniform", 2)
    # the default sampler's own schedule type yields to the member's; a combined name's does not
    r = resolve(Params(prompt="cat", sampler="k_euler_a", scheduler="simple"), Defaults(), Limits())
    assert (r.sampler, r.scheduler) == ("Euler a", "Simple")
    r = resolve(Params(prompt="cat", sampler="DPM++ 2M SDE Karras"), Defaults(), Limits())
    assert (r.sampler, r.scheduler) == ("DPM++ 2M SDE", "Karras")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"scheduler": "karas"}, "Unknown schedule type `karas`; did you mean `Karras`?"),
        ({"sampler": "Eular a"}, "did you mean `Euler a`?"),
        ({"sampler": "Restart"}, "nearest that runs is `Heun`"),
        ({"sampler": "DDIM", "scheduler": "Karras"}, "runs its own timesteps"),
        (
            {"sampler": "Euler Karras", "scheduler": "Exponential"},
            "`--sampler Euler --scheduler Exponential`",
        ),
        ({"clip_skip": 13}, "Clip skip must be between 0 and 12"),
    ],
)
def test_bad_sampler_pairs_and_clip_skip_are_refused_naming_a_fix(params, needle):
    with pytest.raises(PolicyError, match=re.escape(needle)):
        resolve(Params(prompt="cat", **params), Defaults(), Limits())
