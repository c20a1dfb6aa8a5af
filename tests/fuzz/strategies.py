"""Hypothesis strategies for what members and admins type: prompts in A1111 syntax, inline flags, and the
checks every refusal's text must pass."""

from __future__ import annotations

import re

from hypothesis import strategies as st

from engine import bounds
from engine.sampler_names import SAMPLER_NAMES, SCHEDULE_NAMES

DISCORD_MESSAGE_CHARS = 2000

# Any character a member can type, surrogates aside (Discord sends UTF-8), control characters included.
any_char = st.characters(exclude_categories=("Cs",))

# Pieces of A1111 syntax and the characters that have broken prompt parsers: brackets, escapes, weights
# (huge, tiny, NaN, malformed), BREAK in all its spellings, LoRA tags, and Unicode that changes width, case or
# direction.
SYNTAX = (
    "(", ")", "[", "]", "\\", "\\(", "\\)", "\\[", "\\]", "\\\\", ":", ",", " ", "\n", "\t",
    "(x:1e308)", "(x:-1e308)", "(x:1e-308)", "(x:nan)", "(x:inf)", ":1.2.3)", ":.)", ":-)", ":+.5)",
    ":1e309)", "((((((((((", "))))))))))", "[[[[[[[[[[", "]]]]]]]]]]", "(a:0)", "(a:-1)",
    "BREAK", " BREAK ", "BREAK BREAK", "(BREAK)", "[BREAK:2]", "break", "XBREAK", "BREAKX", "\nBREAK\n",
    "<lora:ink:0.8>", "<lora:ink>", "<lora:ink:0.8:0.5>", "<lora:ink:nan>", "<lora:ink:inf>",
    "<lora:ink:1e308>", "<lora:ink:1e308><lora:ink:1e308>", "<lora:ink:x>", "<lora:Film Grain:-2>",
    "<lora:nope:1>", "<lora::1>", "<lora:", ">", "<LORA:INK:1>", "<lora:ink:1:2:3:4>",
    "cat", "a photo of a dog", "masterpiece, best quality", "lighthouse",
    "\x00", "\u200b", "\u202e", "\ufeff", "ß", "ﬁ", "İ", "Ａ", "🐱", "👩‍👩‍👧", "漢字", "e\u0301",
    "--", "—", "–", "-- ", "-",
)  # fmt: skip
syntax_piece = st.sampled_from(SYNTAX)
prompt_text = st.lists(st.one_of(syntax_piece, st.text(any_char, max_size=20)), max_size=40).map("".join)

# Inline flags: every alias in every case, unknown ones, and values of every shape a member might type.
FLAG_NAMES = (
    "ar", "aspect", "no", "seed", "steps", "cfg", "sampler", "count", "n", "model", "strength",
    "scheduler", "schedule", "clip-skip", "clipskip", "Scheduler", "clip", "skip",
    "AR", "Steps", "CFG", "Seed", "N", "quality", "v", "stylize", "x-y", "a_b",
)  # fmt: skip
NUMBERS = (
    "0", "1", "-1", "+1", "20", "150", "151", "16", "17", "4294967295", "4294967296", "999999999999",
    "9999999999999", "1e3", "0.5", "7.5", "30", "30.0000001", "0.05", "0.0499", "1.0", "1e-8", "1e308",
    "-1e308", "nan", "NaN", "inf", "-inf", "Infinity", "1_000", "0x10", "٣", "１２", "½", "", " ", "\"\"",
    "'7'", "\"7 8\"", "'unclosed", "\"a \\\" b\"",
)  # fmt: skip
ASPECT_VALUES = (
    "1:1", "16:9", "9:16", "4:1", "1:4", "5:1", "0:1", "1:0", "999:1", "999:998", "16x9", "16×9", "16/9",
    " 3 : 2 ", "a:b", "16:9:1", "1000:1", "-1:1", ":", "",
)  # fmt: skip
flag_value = st.one_of(
    st.sampled_from(NUMBERS),
    st.sampled_from(ASPECT_VALUES),
    st.sampled_from(SAMPLER_NAMES),
    st.sampled_from(SAMPLER_NAMES).map(str.lower),
    st.sampled_from(SCHEDULE_NAMES),
    st.sampled_from(SCHEDULE_NAMES).map(str.upper),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    prompt_text,
)
flag = st.tuples(st.sampled_from(FLAG_NAMES), flag_value).map(lambda nv: f" --{nv[0]} {nv[1]}")
flagged_prompt = st.tuples(prompt_text, st.lists(flag, max_size=6)).map(lambda p: p[0] + "".join(p[1]))

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+|\b\w+Error: ")


def assert_friendly(message: str) -> None:
    """A refusal a member can read: some words, fits one Discord message, no traceback, no Python repr of
    an exception."""
    assert message.strip(), "an empty refusal"
    assert len(message) < DISCORD_MESSAGE_CHARS, f"{len(message)} characters"
    assert not _TRACEBACK.search(message), message


def assert_prompt_bounded(text: str) -> None:
    assert len(text) <= bounds.PROMPT_CHARS
    assert "\x00" not in text
    assert bounds.break_chunks(text) <= bounds.PROMPT_CHUNKS


# Emphasis trees, nested deep, with weights as a member may write them: tiny, huge (hundreds of digits:
# float() makes those inf), signed, with stray dots.
weight_literal = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda w: f"{w:.6g}".replace("e+", "").replace("e", "")),
    st.integers(0, 10**400).map(str),
    st.sampled_from(("0", "-0", ".", "..", "1.", ".5", "+2", "-1.5", "1.2.3", "9" * 320)),
)
emphasis = st.recursive(
    st.one_of(syntax_piece, st.text(any_char, max_size=8)),
    lambda inner: st.one_of(
        st.tuples(inner, weight_literal).map(lambda t: f"({t[0]}:{t[1]})"),
        inner.map(lambda t: f"({t})"),
        inner.map(lambda t: f"[{t}]"),
        st.lists(inner, min_size=2, max_size=4).map(" BREAK ".join),
        st.lists(inner, min_size=2, max_size=4).map("".join),
    ),
    max_leaves=30,
)
a1111_prompt = st.one_of(prompt_text, emphasis)

# LoRA tags: the library's names in any case, unknown ones, and weights up to the float limits (two tags
# of one name add up).
lora_weight = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(("", "1e308", "-1e308", "1.7976931348623157e308", "nan", "inf", "x", " 0.5 ", "1:2")),
)
lora_tag = st.tuples(st.sampled_from(("ink", "INK", "Film Grain", "nope", " ink ")), lora_weight).map(
    lambda t: f"<lora:{t[0]}:{t[1]}>" if t[1] else f"<lora:{t[0]}>"
)
lora_prompt = st.lists(st.one_of(lora_tag, syntax_piece), max_size=12).map("".join)

# What most members type: a plain prompt and flags within range, so that properties over accepted requests
# (quotas, the engine's own checks) see many of them.
_valid_flag = st.one_of(
    st.integers(bounds.STEPS.lo, bounds.STEPS.hi).map(lambda v: f" --steps {v}"),
    st.integers(bounds.COUNT.lo, bounds.COUNT.hi).map(lambda v: f" --n {v}"),
    st.sampled_from(("1:1", "16:9", "2:3", "4:1", "1:4", "7:5")).map(lambda v: f" --ar {v}"),
    st.floats(bounds.CFG.lo, bounds.CFG.hi).map(lambda v: f" --cfg {v}"),
    st.sampled_from(SAMPLER_NAMES).map(lambda v: f" --sampler {v}"),
    st.sampled_from(SCHEDULE_NAMES).map(lambda v: f" --scheduler {v}"),
    st.integers(bounds.CLIP_SKIP.lo, bounds.CLIP_SKIP.hi).map(lambda v: f" --clip-skip {v}"),
    st.integers(bounds.SEED.lo, bounds.SEED.hi).map(lambda v: f" --seed {v}"),
    st.floats(bounds.STRENGTH.lo, bounds.STRENGTH.hi).map(lambda v: f" --strength {v}"),
    st.sampled_from(("blurry", "text, watermark", "(ugly:1.3)")).map(lambda v: f" --no {v}"),
)
plausible_prompt = st.tuples(
    st.sampled_from(("a cat", "a lighthouse at dusk", "(masterpiece:1.2), a castle BREAK snow")),
    st.lists(_valid_flag, max_size=3, unique_by=lambda f: f.split()[0]),
).map(lambda p: p[0] + "".join(p[1]))
typed_prompt = st.one_of(flagged_prompt, plausible_prompt)
