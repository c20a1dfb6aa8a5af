"""Blocklist terms, fuzzed (bot/jobs/blocklist.py): whatever an admin adds is refused with a clear reason
or compiles; a compiled term blocks its own words however they are spelled back; and matching any prompt,
against the pathological patterns that freeze backtracking engines too, finishes within the bot's own
check bound."""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.cogs.admin._moderation import MAX_TERMS
from bot.jobs import blocklist
from bot.jobs.policy import PolicyError
from engine import bounds

from .strategies import any_char, assert_friendly, prompt_text

# The patterns that take exponential or polynomial time on a backtracking engine (Python's re), with the
# prompts that trigger them; and ones RE2 refuses (back-references, lookarounds, huge repeats).
PATHOLOGICAL = (
    r"(a+)+$", r"(a|a)*$", r"(a|aa)+$", r"(a*)*b", r"(.*a){20}", r"(x+x+)+y", r"(\w+\s?)*$",
    r"^(([a-z])+.)+[A-Z]([a-z])+$", r"((a+)+)+c", r"(.*?,){30}z", r"(a?){30}a{30}", r"^(\s*\S+\s*)*!$",
    r"(\d+|\d+\.\d+)+x", r"(.*){1,32000}[bc]", r"a{1000}{1000}", r"(?:a{100}){100}", r"(a)\1", r"(?=a)a",
    r"(?<!x)a", r"[", r"(", r"*", r"a**", r"\p{Nope}", r"(?P<n>a)(?P=n)", r"", r"a|", r".*", r"^", r"$|x",
)  # fmt: skip
ATTACKS = (
    "a" * 1500 + "!", "a" * 1499 + "b", "x" * 1500, "a," * 750, "a" * 30, "1." * 750 + "!",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", " " * 1500, "ab" * 750,
)  # fmt: skip
REGEX_PIECES = (
    *PATHOLOGICAL, "a", "b", ".", "\\", "(", ")", "[a-z]", "+", "*", "?", "{2,}", "{", "}", "|", "^", "$",
    "\\b", "\\w", "\\pL", "(?i)", "gore", "ß", "é", "\u200b",
)  # fmt: skip

regex_term = st.lists(st.sampled_from(REGEX_PIECES), max_size=8).map(lambda parts: "/" + "".join(parts) + "/")
word = st.text(any_char, min_size=1, max_size=12)
literal_term = st.lists(word, min_size=1, max_size=4).map(" ".join)
term_text = st.one_of(regex_term, literal_term, st.text(any_char, max_size=blocklist.MAX_TERM_CHARS + 20))
attack = st.one_of(st.sampled_from(ATTACKS), prompt_text).map(lambda t: t[: bounds.PROMPT_CHARS])


def compile_or_refuse(raw: str) -> blocklist.Term | None:
    try:
        term = blocklist.compile_term(raw)
    except PolicyError as exc:
        assert_friendly(str(exc))
        return None
    assert 0 < len(term.raw) <= blocklist.MAX_TERM_CHARS
    assert term.is_regex == blocklist.is_regex(raw)
    return term


@example("/" + r"(a+)+$" + "/")
@example("/(a)\\1/")
@example("/(.*){1,32000}[bc]/")
@given(term_text)
def test_a_term_is_refused_with_a_reason_or_compiles_and_never_blocks_everything(raw):
    term = compile_or_refuse(raw)
    if term is not None:
        # "Matches an empty prompt, so it would block everything" is refused at add.
        assert blocklist.find_blocked([" "], [term]) is None or not term.is_regex


@given(literal_term, prompt_text, prompt_text)
def test_a_literal_term_blocks_its_own_words_in_any_prompt(raw, before, after):
    term = compile_or_refuse(raw)
    if term is None:
        return
    # Its words, as the admin typed them, between spaces: always a whole-word match.
    hit = blocklist.find_blocked([f"{before} {raw} {after}"], [term])
    assert hit is not None, (raw, blocklist.normalize(raw))


@given(st.text(any_char, max_size=200))
def test_normalizing_is_stable(text):
    # A prompt's normalized form is normalized already: what the filter reads is what it would read again.
    once = blocklist.normalize(text)
    assert blocklist.normalize(once) == once


@given(st.lists(st.one_of(regex_term, literal_term), min_size=1, max_size=MAX_TERMS), attack, attack)
def test_matching_any_prompt_finishes_within_the_check_bound(raws, prompt, negative):
    terms = blocklist.compile_terms(raws)
    # The bot's own bound (Checker.find refuses a prompt it could not check by then). RE2 needs
    # milliseconds; a backtracking engine needs longer than the universe has on "(a+)+$" and "a"*30 + "!".
    deadline = time.monotonic() + blocklist.CHECK_SECONDS
    hit = blocklist.find_blocked([prompt, negative], terms, deadline=deadline)
    if hit is not None:
        assert hit.term in terms and hit.index in (0, 1)


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_each_pathological_pattern_is_refused_or_answers_every_attack_in_time(pattern):
    term = compile_or_refuse(f"/{pattern}/")
    if term is None:
        return
    deadline = time.monotonic() + blocklist.CHECK_SECONDS
    for prompt in ATTACKS:
        blocklist.find_blocked([prompt], [term], deadline=deadline)


letters = st.text(st.characters(categories=("Lu", "Ll", "Lt", "Lo")), min_size=1, max_size=10)


@given(st.lists(letters, min_size=1, max_size=3), st.sampled_from(("upper", "zero-width", "underscore")))
def test_a_word_term_blocks_its_spellings(words, how):
    # The documented spellings: any case, a zero-width character inside a word, words joined by "_".
    raw = " ".join(words)
    term = compile_or_refuse(raw)
    if term is None:
        return
    if how == "upper":
        spelled = raw.upper()
    elif how == "zero-width":
        spelled = " ".join(w[:1] + "\u200b" + w[1:] for w in words)
    else:
        spelled = "_".join(words)
    assert blocklist.find_blocked([f"a {spelled} b"], [term]) is not None, (raw, spelled)
