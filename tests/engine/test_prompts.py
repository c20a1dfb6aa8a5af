"""A1111 prompt syntax: the emphasis parser, 75-token chunks, emphasis weights, and the runner using them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine import conditioning, prompts
from engine.prompts import (
    apply_emphasis,
    encode_prompts,
    encode_weighted,
    needs_embeddings,
    parse_prompt_attention,
    tokenize_prompt,
)
from engine.tiny import _WORDS

from .conftest import request
from .outputs import assert_same_image, pixels

# ------------------------------------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The examples of A1111's parse_prompt_attention docstring.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
        (
            "a (very) (beautiful:1.5) [house]",
            [("a ", 1.0), ("very", 1.1), (" ", 1.0), ("beautiful", 1.5), (" ", 1.0), ("house", 1 / 1.1)],
        ),
        ("\\(literal\\)", [("(literal)", 1.0)]),
        ("back\\\\slash", [("back\\slash", 1.0)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("closing) only]", [("closing) only]", 1.0)]),
        ("smile :) style: anime", [("smile :) style: anime", 1.0)]),
        ("(a:0.5) (b:-1) (c: 2 )", [("a", 0.5), (" ", 1.0), ("b", -1.0), (" ", 1.0), ("c", 2.0)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a BREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a break b, aBREAK", [("a break b, aBREAK", 1.0)]),  # only the upper-case word
        ("", [("", 1.0)]),
        # As in A1111, brackets multiply BREAK's -1 marker: no BREAK then, the word weighted -1.5.
        ("(a BREAK b:1.5)", [("a", 1.5), ("BREAK", -1.5), ("b", 1.5)]),
        # A deliberate difference from A1111: a malformed weight is text.
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
    ],
)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [f for f, _ in got] == [f for f, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


# ---------------------------------------------------------------------------------------------- chunks


@pytest.fixture(scope="module")
def pipe(runner):
    return runner.pipe


@pytest.fixture(scope="module")
def words(pipe) -> list[str]:
    """Tiny-vocabulary words that are one token each (so N words are N tokens, and no commas)."""
    ids = pipe.tokenizer(list(dict.fromkeys(_WORDS)), add_special_tokens=False)["input_ids"]
    single = [w for w, x in zip(dict.fromkeys(_WORDS), ids, strict=True) if len(x) == 1]
    assert len(single) >= 20
    return single


def n_words(words: list[str], n: int, offset: int = 0) -> str:
    return " ".join(itertools.islice(itertools.cycle(words), offset, offset + n))


def content(chunk: prompts.PromptChunk, tokenizer) -> list[int]:
    """The chunk's ids between BOS and the first EOS."""
    assert chunk.tokens[0] == tokenizer.bos_token_id and len(chunk.tokens) == 77
    return chunk.tokens[1 : chunk.tokens.index(tokenizer.eos_token_id)]


def test_chunks_of_75_with_bos_eos(pipe, words):
    tok = pipe.tokenizer
    text = n_words(words, 200)
    chunks = tokenize_prompt(tok, text)
    assert [len(content(c, tok)) for c in chunks] == [75, 75, 50]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert [t for c in chunks for t in content(c, tok)] == ids  # nothing cut
    assert chunks[2].tokens[51:] == [tok.eos_token_id] * 26  # EOS, then EOS as padding (SD 1.x)
    assert len(tokenize_prompt(tok, n_words(words, 75))) == 1
    assert len(tokenize_prompt(tok, n_words(words, 76))) == 2
    assert len(tokenize_prompt(tok, "")) == 1
    assert prompts.chunk_count(tok, "a cat", text) == 3 and prompts.chunk_count(tok, "a BREAK b", "") == 2


def test_break_starts_a_new_chunk(pipe):
    tok = pipe.tokenizer
    a, b = (tok(w, add_special_tokens=False)["input_ids"] for w in ("a", "cat"))
    chunks = tokenize_prompt(tok, "a BREAK cat")
    assert [content(c, tok) for c in chunks] == [a, b]
    assert len(tokenize_prompt(tok, "a BREAK")) == 1  # nothing after it: no empty chunk


def test_words_after_a_near_comma_move_to_the_next_chunk(pipe, words):
    tok = pipe.tokenizer
    # 70 tokens, a comma, 10 tokens: the chunk fills 4 tokens after the comma, so those move on (A1111's
    # word-wrap at commas up to 20 tokens back).
    chunks = tokenize_prompt(tok, n_words(words, 70) + ", " + n_words(words, 10, offset=70))
    assert [len(content(c, tok)) for c in chunks] == [71, 10]
    # A comma further back than 20 tokens: a plain cut at 75.
    chunks = tokenize_prompt(tok, n_words(words, 40) + ", " + n_words(words, 40, offset=40))
    assert [len(content(c, tok)) for c in chunks] == [75, 6]


def test_weights_follow_their_tokens(pipe):
    tok = pipe.tokenizer
    (chunk,) = tokenize_prompt(tok, "a (photo:1.5) of [cat]")
    n = [len(tok(w, add_special_tokens=False)["input_ids"]) for w in ("a", "photo", "of", "cat")]
    expected = [1.0] * n[0] + [1.5] * n[1] + [1.0] * n[2] + [1 / 1.1] * n[3]
    assert chunk.multipliers[1 : 1 + sum(n)] == pytest.approx(expected)
    assert chunk.multipliers[0] == 1.0 and set(chunk.multipliers[1 + sum(n) :]) == {1.0}


# -------------------------------------------------------------------------------------------- encoding


def test_emphasis_restores_the_chunk_mean():
    z = torch.randn(3, 77, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    m = torch.ones(3, 77)
    m[1, 5:9] = 1.5
    m[2, 10] = 0.2
    out = apply_emphasis(z, m)
    assert torch.equal(out[0], z[0])  # all weights 1: untouched, bit for bit
    torch.testing.assert_close(out.mean(dim=(1, 2)), z.mean(dim=(1, 2)))
    ratio = out[1, 5] / out[1, 0]  # weighted token against an unweighted one of the same chunk
    torch.testing.assert_close(ratio, 1.5 * z[1, 5] / z[1, 0])


def test_emphasis_of_a_chunk_whose_mean_is_rounding_noise_keeps_the_weights():
    # A text encoder ending in a LayerNorm without bias (the tiny model's) gives every token vector a mean
    # of 0, so a chunk's mean is float rounding: restoring it scaled the chunk by a ratio of two rounding
    # errors (x3 on one CPU; bit-identical pictures for (cat:1.6) and [[cat]] on another).
    z = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    z = z - z.mean(dim=-1, keepdim=True)
    m = torch.ones(2, 77)
    m[0, 5] = 1.6
    m[1, 5] = 1 / 1.21
    out = apply_emphasis(z, m)
    torch.testing.assert_close(out, z * m.unsqueeze(-1), rtol=1e-6, atol=1e-7)


def test_plain_prompts_encode_like_the_pipeline(pipe):
    texts, negs = ["a photo of a cat", "a red car"], ["", "blurry, lowres"]
    ours, our_neg = encode_weighted(pipe, texts, negs, "cpu", torch.float32)
    ref, ref_neg = pipe.encode_prompt(texts, "cpu", 1, True, negs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(our_neg, ref_neg, rtol=0, atol=1e-6)
    # A neutral weight parses to the same tokens and weights as the plain text.
    neutral, _ = encode_weighted(pipe, ["a photo of a (cat:1.0)"], [""], "cpu", torch.float32)
    torch.testing.assert_close(neutral, ref[:1], rtol=0, atol=1e-6)


def test_fast_path_only_for_plain_short_batches(pipe, words):
    assert not needs_embeddings(pipe, ["a cat", "smile :)", "", n_words(words, 75)])
    assert encode_prompts(pipe, ["a cat", "style: anime"], ["blurry", ""], "cpu", torch.float32) is None
    for special in ["a (cat)", "a [cat]", "a BREAK cat", "\\(cat\\)", n_words(words, 76)]:
        assert needs_embeddings(pipe, ["a cat", special]), special
    # One negative is enough to switch the whole batch to embeddings.
    got = encode_prompts(pipe, ["a cat", "a dog"], ["", "(blurry:1.3)"], "cpu", torch.float32)
    assert got is not None and got[0].shape == got[1].shape == (2, 77, 32)


def test_long_prompt_is_encoded_in_chunks_and_padded(pipe, words):
    long = n_words(words, 200)
    pos, neg = encode_prompts(pipe, [long, "a cat"], ["", "(blurry)"], "cpu", torch.float32)
    assert pos.shape == neg.shape == (2, 231, 32)  # 3 chunks of 77 for every row
    empty, _ = encode_weighted(pipe, [""], [""], "cpu", torch.float32)
    # The shorter rows are padded with the encoding of the empty chunk.
    for row in (pos[1], neg[0], neg[1]):
        torch.testing.assert_close(row[77:154], empty[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(row[154:], empty[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- runner
#
# What the runner guarantees is the embeddings it hands the pipeline; how much those move the tiny random
# model's 8-bit picture depends on its weights and the CPU (tests/engine/outputs.py), so a difference is
# asserted on the embeddings, and pictures are compared only as "the same up to rounding".


def render(runner, prompt: str, **kw) -> np.ndarray:
    return pixels(runner.run([request("p", prompt=prompt, **kw)])["p"])


@pytest.fixture
def pipeline_kwargs(runner, monkeypatch) -> list[dict]:
    """The keyword arguments of each pipeline call (its class's __call__, which `pipe(**kw)` goes through)."""
    seen: list[dict] = []
    cls = type(runner.pipe)
    original = cls.__call__

    def spy(self, *args, **kwargs):
        seen.append(dict(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return seen


def embeds_of(runner, pipeline_kwargs, prompt: str, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``prompt`` and return the (prompt, negative) embeddings the pipeline was given."""
    render(runner, prompt, **kw)
    given = pipeline_kwargs[-1]
    assert {"prompt_embeds", "negative_prompt_embeds"} <= set(given), set(given)
    assert not {"prompt", "negative_prompt"} & set(given)
    return given["prompt_embeds"], given["negative_prompt_embeds"]


def test_fast_path_calls_the_pipeline_with_prompt_text(runner, pipeline_kwargs, monkeypatch):
    image = render(runner, "a photo of a cat", negative_prompt="blurry", seed=3)
    assert len(pipeline_kwargs) == 1
    assert {"prompt", "negative_prompt"} <= set(pipeline_kwargs[0])
    assert not {"prompt_embeds", "negative_prompt_embeds"} & set(pipeline_kwargs[0])
    # Bit-identical to the runner without the prompt hook: the very same pipeline call, so the same floats.
    monkeypatch.setattr(conditioning, "encode_conditioning", lambda *a, **k: None)
    assert np.array_equal(image, render(runner, "a photo of a cat", negative_prompt="blurry", seed=3))


def assert_emphasized(given: torch.Tensor, plain: torch.Tensor, multipliers: list[float]) -> None:
    """``given`` is A1111's emphasis of ``plain``: each token scaled by its multiplier, then the whole chunk
    by one positive factor (the mean restoration). A difference of the embeddings' own size, not rounding."""
    plain = plain.detach()
    m = torch.tensor(multipliers).unsqueeze(-1)
    others = m.squeeze(-1) == 1.0
    assert not others.all()
    s = (given[0, others] * plain[0, others]).sum() / (plain[0, others] ** 2).sum()  # least squares
    assert torch.isfinite(s) and s > 0, s
    scale = float(plain.abs().mean())
    torch.testing.assert_close(given[0], s * m * plain[0], rtol=1e-4, atol=1e-5 * scale)
    assert (given[0, ~others] / s - plain[0, ~others]).abs().max() > 0.1 * scale


def test_weights_reach_the_pipeline(runner, pipeline_kwargs):
    pipe = runner.pipe
    plain, plain_neg = pipe.encode_prompt(["a photo of a cat"], "cpu", 1, True, [""])
    for prompt in ("a photo of a (cat:1.6)", "a photo of a [[cat]]"):
        given, given_neg = embeds_of(runner, pipeline_kwargs, prompt, seed=5)
        (chunk,) = tokenize_prompt(pipe.tokenizer, prompt)  # the parser's weights, tested above
        assert_emphasized(given, plain, chunk.multipliers)
        torch.testing.assert_close(given_neg, plain_neg, rtol=0, atol=1e-6)  # the empty negative: untouched
    # A neutral weight: the plain encoding, up to the rounding of another encoder batch size.
    neutral, _ = embeds_of(runner, pipeline_kwargs, "a photo of a (cat:1.0)", seed=5)
    torch.testing.assert_close(neutral, plain, rtol=0, atol=1e-6)


def test_long_prompt_is_not_cut(runner, pipeline_kwargs, words):
    pipe = runner.pipe
    long, first = n_words(words, 200), n_words(words, 75)
    given, _ = embeds_of(runner, pipeline_kwargs, long, seed=2)
    assert given.shape == (1, 231, 32)  # three chunks of 77: all 200 tokens
    torch.testing.assert_close(given, encode_weighted(pipe, [long], [""], "cpu", torch.float32)[0])
    # The chunks after the first carry words (they are not the empty chunk used as padding).
    empty, _ = encode_weighted(pipe, [""], [""], "cpu", torch.float32)
    for chunk in (given[0, 77:154], given[0, 154:]):
        assert (chunk - empty[0]).abs().max() > 0.1 * empty.abs().mean()
    # Control: the pipeline alone cuts at 77 tokens, so without the hook the long prompt would be the first
    # 75 words (the same pipeline call on the same ids: the same floats).
    cut, _ = pipe.encode_prompt([long], "cpu", 1, True, [""])
    assert torch.equal(cut, pipe.encode_prompt([first], "cpu", 1, True, [""])[0])


def test_long_negative_with_short_positive(runner, pipeline_kwargs, words):
    pipe = runner.pipe
    neg = n_words(words, 200, offset=3)
    pos, negative = embeds_of(runner, pipeline_kwargs, "a cat", negative_prompt=neg, seed=4)
    assert pos.shape == negative.shape == (1, 231, 32)
    torch.testing.assert_close(negative, encode_weighted(pipe, ["a cat"], [neg], "cpu", torch.float32)[1])
    # The negative's words past 75 are there; the short positive is padded with empty chunks.
    empty, _ = encode_weighted(pipe, [""], [""], "cpu", torch.float32)
    assert (negative[0, 77:154] - empty[0]).abs().max() > 0.1 * empty.abs().mean()
    torch.testing.assert_close(pos[0, 77:154], empty[0], rtol=0, atol=1e-6)


def test_emphasized_prompts_batched_equal_their_results_alone(runner, pipeline_kwargs):
    a = request("a", prompt="a (cat:1.3) on a [red] car", seed=10, count=2, sampler="Euler a")
    b = request(
        "b", prompt="((forest)), night", negative_prompt="(blurry:1.2), lowres", seed=99, sampler="Euler a"
    )
    c = request(
        "c", prompt="a photo of a dog", seed=7, sampler="Euler a"
    )  # plain: fast path alone, embeddings in the batch
    alone = {r.job_id: runner.run([r])[r.job_id] for r in (a, b, c)}
    alone_embeds = [pipeline_kwargs[0], pipeline_kwargs[1]]
    calls = []
    original = runner._call_pipeline

    def spy(items, emit):
        calls.append([(job.job_id, i) for job, i in items])
        return original(items, emit)

    runner._call_pipeline = spy
    try:
        both = runner.run([a, b, c])
    finally:
        del runner._call_pipeline
    assert calls == [[("a", 0), ("a", 1), ("b", 0), ("c", 0)]]  # one UNet batch
    # Each row of the batch gets the embeddings its request gets alone (up to encoder-batch rounding)...
    batch = pipeline_kwargs[-1]
    rows = [(alone_embeds[0], 0), (alone_embeds[0], 1), (alone_embeds[1], 0)]
    for row, (given, i) in enumerate(rows):
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            torch.testing.assert_close(batch[name][row], given[name][i], rtol=0, atol=1e-5)
    plain_c, _ = runner.pipe.encode_prompt([c.prompt], "cpu", 1, True, [""])
    torch.testing.assert_close(batch["prompt_embeds"][3], plain_c[0], rtol=0, atol=1e-5)
    # ...and its own seed, so the pictures are the same up to rounding.
    assert [g.initial_seed() for g in batch["generator"]] == [10, 11, 99, 7]
    for job_id, done in alone.items():
        for i in range(len(done.images)):
            assert_same_image(pixels(done, i), pixels(both[job_id], i))
