"""A1111 prompt syntax: the emphasis parser, 75-token chunks, emphasis weights, and the runner using them."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from engine import prompts
from engine.prompts import (
    apply_emphasis,
    encode_prompts,
    encode_weighted,
    needs_embeddings,
    parse_prompt_attention,
    tokenize_prompt,
)
from engine.protocol import JobDone
from engine.tiny import _WORDS

from .conftest import request

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
        # Deliberate differences from A1111: a BREAK in brackets stays a BREAK; a malformed weight is text.
        ("(a BREAK b:1.5)", [("a", 1.5), ("BREAK", -1.0), ("b", 1.5)]),
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


def pixels(done: JobDone, i: int = 0) -> np.ndarray:
    assert isinstance(done, JobDone), done
    return np.asarray(Image.open(io.BytesIO(done.images[i].png)).convert("RGB")).astype(np.int16)


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    # A different UNet/text-encoder batch may change float rounding in the last bit (as in test_runner).
    diff = np.abs(a - b)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def render(runner, prompt: str, **kw) -> np.ndarray:
    return pixels(runner.run([request("p", prompt=prompt, **kw)])["p"])


@pytest.fixture
def pipeline_kwargs(runner, monkeypatch):
    """The keyword names of every pipeline call (the class's __call__, which `pipe(**kw)` goes through)."""
    seen: list[set[str]] = []
    cls = type(runner.pipe)
    original = cls.__call__

    def spy(self, *args, **kwargs):
        seen.append(set(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return seen


def test_fast_path_calls_the_pipeline_with_prompt_text(runner, pipeline_kwargs, monkeypatch):
    image = render(runner, "a photo of a cat", negative_prompt="blurry", seed=3)
    assert len(pipeline_kwargs) == 1
    assert {"prompt", "negative_prompt"} <= pipeline_kwargs[0]
    assert not {"prompt_embeds", "negative_prompt_embeds"} & pipeline_kwargs[0]
    # Bit-identical to the runner without the prompt hook (the plain pipeline call).
    monkeypatch.setattr(prompts, "encode_prompts", lambda *a, **k: None)
    assert np.array_equal(image, render(runner, "a photo of a cat", negative_prompt="blurry", seed=3))


def test_weights_change_the_image(runner, pipeline_kwargs):
    plain = render(runner, "a photo of a cat", seed=5)
    strong = render(runner, "a photo of a (cat:1.6)", seed=5)
    weak = render(runner, "a photo of a [[cat]]", seed=5)
    assert {"prompt_embeds", "negative_prompt_embeds"} <= pipeline_kwargs[1]
    assert not np.array_equal(plain, strong) and not np.array_equal(plain, weak)
    assert not np.array_equal(strong, weak)
    assert_same_image(plain, render(runner, "a photo of a (cat:1.0)", seed=5))  # neutral weight


def test_long_prompt_is_not_cut(runner, words, monkeypatch):
    long, first = n_words(words, 200), n_words(words, 75)
    long_img, first_img = render(runner, long, seed=2), render(runner, first, seed=2)
    assert not np.array_equal(long_img, first_img)
    # Control: the pipeline alone cuts at 75 tokens, so without the hook both prompts give one image.
    monkeypatch.setattr(prompts, "encode_prompts", lambda *a, **k: None)
    assert np.array_equal(render(runner, long, seed=2), first_img)


def test_long_negative_with_short_positive(runner, words):
    neg = n_words(words, 200, offset=3)
    pos, negative = encode_prompts(runner.pipe, ["a cat"], [neg], "cpu", torch.float32)
    assert pos.shape == negative.shape == (1, 231, 32)
    image = render(runner, "a cat", negative_prompt=neg, seed=4)
    assert not np.array_equal(image, render(runner, "a cat", negative_prompt=n_words(words, 75, 3), seed=4))


def test_emphasized_prompts_batched_equal_their_results_alone(runner):
    a = request("a", prompt="a (cat:1.3) on a [red] car", seed=10, count=2, sampler="Euler a")
    b = request(
        "b", prompt="((forest)), night", negative_prompt="(blurry:1.2), lowres", seed=99, sampler="Euler a"
    )
    c = request(
        "c", prompt="a photo of a dog", seed=7, sampler="Euler a"
    )  # plain: fast path alone, embeddings in the batch
    alone = {r.job_id: runner.run([r])[r.job_id] for r in (a, b, c)}
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
    for job_id, done in alone.items():
        for i in range(len(done.images)):
            assert_same_image(pixels(done, i), pixels(both[job_id], i))
