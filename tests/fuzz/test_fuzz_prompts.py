"""A1111 prompt syntax, fuzzed: emphasis (nested, unbalanced, huge weights), BREAK and LoRA tags never raise
anything but the documented errors, and encode to a bounded number of chunks with usable weights."""

from __future__ import annotations

import pytest
from hypothesis import example, given

from engine import bounds, prompts
from engine import loras as lora_tags
from engine.prompts import BREAK, CHUNK_LENGTH, parse_prompt_attention, tokenize_prompt
from engine.requests import RequestError, chunk_count

from .strategies import a1111_prompt, assert_friendly, lora_prompt, prompt_text


# Found by this property (weights were unbounded): a 400-digit weight is inf, two nested 1e200s make inf,
# and 3.4e38 is finite in float64 but inf in the float32 embeddings.
@example("(x:" + "9" * 400 + ")")
@example("((x:" + "9" * 200 + "):" + "9" * 200 + ")")
@example("((x:" + "9" * 400 + "):0)")  # inf times 0: NaN
@example("( BREAK (]:309347587853208004574775438360574951425)")
@given(a1111_prompt)
def test_emphasis_parses_into_finite_weights_and_no_more_text(text):
    parsed = parse_prompt_attention(text)
    assert parsed
    for fragment, weight in parsed:
        # An infinite or NaN weight (or 1e39, inf in float32) turns the chunk's embeddings into NaN: a black
        # picture, no error.
        assert weight in bounds.WEIGHT or (fragment, weight) == (BREAK, -1.0), (fragment, weight)
    # Fragments are pieces of the text (escapes lose their backslash): parsing never multiplies it.
    assert sum(len(fragment) for fragment, _ in parsed) <= max(len(text), 0)
    assert prompts.has_syntax(text) in (True, False)


@example("([(\\(:340282346638528803143306389048774361089)])")
@given(a1111_prompt.map(lambda t: t[: bounds.PROMPT_CHARS]))
def test_a_prompt_tokenizes_into_bounded_chunks_or_is_refused_for_its_length(clip_tokenizer, text):
    try:
        chunks = tokenize_prompt(clip_tokenizer, text)
    except prompts.PromptTooLongError as exc:
        assert_friendly(str(exc))
        return
    assert 1 <= len(chunks) <= bounds.PROMPT_CHUNKS
    for chunk in chunks:
        assert len(chunk.tokens) == len(chunk.multipliers) == CHUNK_LENGTH + 2
        assert all(m in bounds.WEIGHT for m in chunk.multipliers), chunk.multipliers
    breaks = parse_prompt_attention(text).count((BREAK, -1.0))
    assert len(chunks) >= max(1, breaks)  # each BREAK ends a chunk (one at the very end adds none)


@given(prompt_text, prompt_text)
def test_the_tokenizer_free_chunk_count_is_bounded_or_a_request_error(prompt, negative):
    # What the simulated runner, and a real one while it loads a model, counts (engine/requests.py).
    try:
        n = chunk_count(None, prompt, negative)
    except RequestError as exc:
        assert_friendly(str(exc))
        assert max(bounds.break_chunks(prompt), bounds.break_chunks(negative)) > bounds.PROMPT_CHUNKS
        return
    assert 1 <= n <= bounds.PROMPT_CHUNKS


# Found by this property: each weight was checked, not their sum (inf); 1e308 alone is inf in float32.
@example("<lora:INK:1e308><lora:INK:1e308>")
@example("<lora:ink:1e308>")
@given(lora_prompt)
def test_lora_tags_give_finite_weights_or_a_clear_error(prompt):
    try:
        text, named = lora_tags.extract(prompt)
    except lora_tags.LoraError as exc:
        assert_friendly(str(exc))
        return
    assert len(text) <= len(prompt)
    assert [lora.name for lora in named] == sorted(lora.name for lora in named)
    for name, te, unet in named:
        assert name and name == name.strip() and not set(name) & set("<>:")
        # The weights go to peft's set_adapters as they are: an infinite one makes NaN pictures.
        assert te in bounds.WEIGHT and unet in bounds.WEIGHT, (name, te, unet)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 1500,
        ")" * 1500,
        "[" * 750 + "]" * 750,
        "(a:1.5)" * 214,
        "\\" * 1500,
        " BREAK " * 214,
        "(" * 700 + "x" + ":2)" * 200,
    ],
)
def test_pathological_prompts_at_the_size_limit(clip_tokenizer, text):
    text = text[: bounds.PROMPT_CHARS]
    parsed = parse_prompt_attention(text)
    assert all(weight in bounds.WEIGHT for _, weight in parsed)
    try:
        assert len(tokenize_prompt(clip_tokenizer, text)) <= bounds.PROMPT_CHUNKS
    except prompts.PromptTooLongError:
        pass
