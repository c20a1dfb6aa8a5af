"""Inline flags, slash options and defaults, fuzzed: whatever a member types is either refused with a
clear message or becomes a job within engine/bounds.py's table that the engine itself accepts."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.jobs.policy import Defaults, Limits, Params, PolicyError, Resolved, parse_flags, resolve
from engine import bounds
from engine import loras as lora_tags
from engine.jobs import JobBook
from engine.loading import ModelSource
from engine.protocol import GenerateRequest, JobKind
from engine.requests import RequestError, prepare_job
from engine.sampler_names import SAMPLER_NAMES

from .strategies import (
    ASPECT_VALUES,
    assert_friendly,
    assert_prompt_bounded,
    prompt_text,
    typed_prompt,
)

defaults = st.builds(
    Defaults,
    steps=st.integers(bounds.STEPS.lo, bounds.STEPS.hi),
    cfg=st.floats(bounds.CFG.lo, bounds.CFG.hi),
    sampler=st.sampled_from(SAMPLER_NAMES),
    size=st.integers(1, 2048 // 64).map(lambda k: k * 64),  # DEFAULT_SIZE's range (bot/settings.py)
    count=st.integers(bounds.COUNT.lo, bounds.COUNT.hi),
)
# Any limits an admin can set (bot/jobs/limits.py's SPECS), the table's own among them.
limits = st.one_of(
    st.just(Limits.table()),
    st.builds(
        Limits,
        max_steps=st.integers(bounds.STEPS.lo, bounds.STEPS.hi),
        max_pixels=st.integers(bounds.PIXELS.lo, bounds.PIXELS.hi),
        max_count=st.integers(bounds.COUNT.lo, bounds.COUNT.hi),
    ),
)

# The slash options as Discord delivers them: numbers inside their app_commands.Range (Discord checks
# those), free text for the rest (aspect and sampler have choices, which a client need not honour).
options = st.builds(
    Params,
    negative=st.none() | prompt_text,
    aspect=st.none() | st.sampled_from(ASPECT_VALUES) | st.text(max_size=30),
    seed=st.none() | st.integers(bounds.SEED.lo, bounds.SEED.hi),
    steps=st.none() | st.integers(bounds.STEPS.lo, bounds.STEPS.hi),
    cfg=st.none() | st.floats(bounds.CFG.lo, bounds.CFG.hi),
    sampler=st.none() | st.sampled_from(SAMPLER_NAMES) | st.text(max_size=30),
    count=st.none() | st.integers(bounds.COUNT.lo, bounds.COUNT.hi),
    model=st.none() | st.text(min_size=1, max_size=bounds.MODEL_NAME_CHARS),
    strength=st.none() | st.floats(bounds.STRENGTH.lo, bounds.STRENGTH.hi),
)


def resolve_typed(text: str, default: Defaults, limit: Limits, option: Params | None = None) -> Resolved:
    """What /imagine does with a prompt: flags split off, options win over them, defaults fill the rest."""
    flags = parse_flags(text)
    if option is not None:  # the slash command's own prompt option is the text the flags came from
        flags = Params(**{**_fields(option), "prompt": flags.prompt}).merged_over(flags)
    params = flags
    return resolve(params, default, limit, rng=random.Random(0))


def _fields(params: Params) -> dict[str, Any]:
    return {name: getattr(params, name) for name in Params.__slots__}


def assert_within_bounds(r: Resolved, limit: Limits) -> None:
    assert_prompt_bounded(r.prompt)
    assert_prompt_bounded(r.negative)
    assert r.prompt.strip()
    assert r.steps in bounds.STEPS and r.steps <= limit.max_steps
    assert r.count in bounds.COUNT and r.count <= limit.max_count
    assert r.cfg in bounds.CFG
    assert r.strength in bounds.STRENGTH
    assert r.seed in bounds.SEED
    assert r.width in bounds.SIDE and r.height in bounds.SIDE
    assert r.width * r.height in bounds.PIXELS and r.width * r.height <= limit.max_pixels
    assert r.width % 8 == 0 and r.height % 8 == 0
    assert r.sampler in SAMPLER_NAMES
    assert r.model is None or 0 < len(r.model) <= bounds.MODEL_NAME_CHARS


# Discord's longest prompt option (1500 characters), spent on what a refusal might echo back.
@example("a --" + "x" * 1495, Defaults(), Limits.table())
@example("a --sampler " + "z" * 1488, Defaults(), Limits.table())
@example("a --ar " + "1" * 1493, Defaults(), Limits.table())
@example("a --model " + "(" * 1490, Defaults(), Limits.table())
@example("a" * 1501, Defaults(), Limits.table())
@example("a" + " BREAK" * bounds.PROMPT_CHUNKS, Defaults(), Limits.table())
@example("a --strength 0.0499 --steps 150", Defaults(), Limits.table())
@given(typed_prompt, defaults, limits)
def test_a_typed_prompt_is_refused_clearly_or_resolved_within_the_bounds(text, default, limit):
    try:
        resolved = resolve_typed(text, default, limit)
    except PolicyError as exc:
        assert_friendly(str(exc))
        return
    assert_within_bounds(resolved, limit)


@given(typed_prompt, options, defaults, limits)
def test_options_merged_over_flags_keep_the_bounds_and_win(text, option, default, limit):
    try:
        resolved = resolve_typed(text, default, limit, option)
    except PolicyError as exc:
        assert_friendly(str(exc))
        return
    assert_within_bounds(resolved, limit)
    # An option the member gave is what the job gets, whatever the flags said.
    for given_value, got in (
        (option.steps, resolved.steps),
        (option.count, resolved.count),
        (option.seed, resolved.seed),
        (option.cfg, resolved.cfg),
        (option.strength, resolved.strength),
    ):
        if given_value is not None:
            assert got == given_value
    if option.negative is not None:
        assert resolved.negative == option.negative.strip()


def _model(name: str | None) -> ModelSource:
    # The bot checked the name against the model folder (_check_model); any name stands for one here.
    return ModelSource("hub", name or "default", name or "default")


def engine_request(
    r: Resolved, kind: JobKind = JobKind.TXT2IMG, init: bytes | None = None
) -> GenerateRequest:
    """The request the bot sends for ``r`` (bot/jobs/engine_request.py's request_for over the job row)."""
    return GenerateRequest(
        job_id="fuzz",
        prompt=r.prompt,
        negative_prompt=r.negative,
        seed=r.seed,
        steps=r.steps,
        cfg_scale=r.cfg,
        width=r.width,
        height=r.height,
        count=r.count,
        sampler=r.sampler,
        model=r.model,
        kind=kind,
        strength=r.strength,
        init_image=init,
    )


def bot_lora_check(library: lora_tags.LoraLibrary, prompt: str) -> None:
    """bot/cogs/imagine's _check_loras for a local worker: a tag the engine would refuse is a PolicyError."""
    try:
        _, named = lora_tags.extract(prompt)
        library.check(named)
    except lora_tags.LoraError as exc:
        raise PolicyError(f"That prompt's LoRA can't be used: {exc}.") from None


@pytest.fixture(scope="module")
def library(lora_folder: Path) -> lora_tags.LoraLibrary:
    return lora_tags.LoraLibrary(lora_folder)


_job_ids = itertools.count()


@given(typed_prompt, options | st.none(), defaults, limits)
def test_what_the_bot_accepts_the_engine_accepts(library, text, option, default, limit):
    """Checked without a tokenizer (the simulated runner; a real one while it loads a model): every job the
    bot queues is one the engine takes, with the same values."""
    try:
        resolved = resolve_typed(text, default, limit, option)
        bot_lora_check(library, resolved.prompt)
    except PolicyError as exc:
        assert_friendly(str(exc))
        return
    job = prepare_job(
        engine_request(resolved), book=JobBook(), resolve_model=_model, loras=library, tokenizer=None
    )
    key = job.key
    assert (key.width, key.height) == (resolved.width, resolved.height)
    assert (key.steps, key.sampler, key.cfg_scale) == (resolved.steps, resolved.sampler, resolved.cfg)
    assert 1 <= key.chunks <= bounds.PROMPT_CHUNKS
    # LoRA weights reach set_adapters as they are: an infinite one makes a batch of NaN pictures.
    assert all(math.isfinite(w) for lora in key.loras for w in (lora.te, lora.unet)), key.loras


@given(typed_prompt, defaults)
def test_with_the_real_tokenizer_a_resolved_prompt_is_queued_or_refused_for_its_length(
    clip_tokenizer, library, text, default
):
    """SD's CLIP tokenizer counts real tokens: a job is taken within PROMPT_CHUNKS chunks, or refused with
    the chunk limit named; never any other error."""
    try:
        resolved = resolve_typed(text, default, Limits.table())
        bot_lora_check(library, resolved.prompt)
    except PolicyError:
        return
    request = engine_request(resolved)
    try:
        job = prepare_job(
            request, book=JobBook(), resolve_model=_model, loras=library, tokenizer=clip_tokenizer
        )
    except RequestError as exc:
        assert f"over {bounds.PROMPT_CHUNKS} chunks" in str(exc)
        assert_friendly(str(exc))
        return
    assert 1 <= job.key.chunks <= bounds.PROMPT_CHUNKS
