import random

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
    assert (r.width, r.height, r.steps, r.count, r.sampler) == (512, 512, 20, 4, "DPM++ 2M Karras")
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
