"""Blocklist matching: normalization, CLIP's word boundaries, RE2 patterns, and the bounded off-loop check
(the admission path runs on a real SQLite database through the real migrations)."""

import asyncio
import threading

import pytest

from bot.jobs.blocklist import Checker, compile_term, compile_terms, find_blocked, normalize
from bot.jobs.policy import MAX_PROMPT_CHARS, PolicyError
from tests.bot.jobs.test_admission import GUILD, OTHER_GUILD, Who, admit, env, make  # noqa: F401

# The freezes: each takes exponential time on a backtracking engine for a prompt like this.
PATHOLOGICAL = ["/(.|\\s)*xyz/", "/(a|aa)+$/", "/(.*a){12}$/", "/((a+))+$/", "/(a+)+$/"]
FREEZING_PROMPT = "a " * 40 + "b"


@pytest.mark.parametrize(
    "text",
    [
        "GORE",
        "Ｇｏｒｅ",  # fullwidth
        "g\u200bore",  # zero-width space
        "g\u00adore",  # soft hyphen
        "gōrë",  # accents
        "g\u0336o\u0336r\u0336e\u0336",  # strike-through combining marks
        "gоrе",  # Cyrillic о and е
        "𝐠𝐨𝐫𝐞",  # mathematical bold
        "ɡοrε",  # Latin script g, Greek omicron and epsilon
        "ɢᴏʀᴇ",  # small capitals
        "gօre",  # Armenian o
    ],
)
def test_normalize_folds_disguises(text):
    assert normalize(text) == "gore"


def test_literal_terms_match_whole_words_only():
    terms = compile_terms(["gore", "red  panda"])
    assert find_blocked(["so much GORE!"], terms).term.raw == "gore"
    assert find_blocked(["a gorefest"], terms) is None
    assert find_blocked(["Gregory"], terms) is None
    assert find_blocked(["a RED\tpanda"], terms).term.raw == "red  panda"
    assert find_blocked(["", "negative: gоre"], terms).index == 1


@pytest.mark.parametrize(
    "prompt",
    [
        "gore_scene",  # CLIP splits at the underscore
        "gore2 scene",  # and between letters and digits
        "2gore",
        "gore\u200bscene",  # and at a zero-width space, which it keeps as a token of its own
        "gore\u2060scene",  # word joiner
        "a ɢᴏʀᴇ scene",  # small-capital look-alikes
        "gօre_scene",  # Armenian o, then an underscore
        "GORE-fest",
    ],
)
def test_spellings_clip_reads_as_the_word_are_caught(prompt):
    hit = find_blocked([prompt], compile_terms(["gore"]))
    assert hit is not None and hit.term.raw == "gore"


@pytest.mark.parametrize("prompt", ["gorges", "ignore the rest", "gorefest", "Gregory", "gorey_scene"])
def test_longer_words_are_not_caught(prompt):
    assert find_blocked([prompt], compile_terms(["gore"])) is None


def test_word_breaks_apply_to_phrases_and_numbers():
    terms = compile_terms(["red panda", "r34"])
    assert find_blocked(["red_panda"], terms).matched == "red_panda"
    assert find_blocked(["red\u200bpanda"], terms) is not None
    assert find_blocked(["r34_art"], terms).term.raw == "r34"
    assert find_blocked(["r345"], terms) is None  # 345 is another number


def test_regex_terms_are_case_insensitive_and_see_normalized_text():
    term = compile_term("/blood(y|bath)/")
    assert term.is_regex
    assert find_blocked(["BLOODBATH at dawn"], [term]).matched == "bloodbath"
    assert find_blocked(["bl\u200boody"], [term]) is not None
    assert find_blocked(["blood orange"], [term]) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 201, "at most"),
        ("/(unclosed/", "RE2 can't read it: missing \\)"),
        ("/(x)\\1/", "back-reference"),
        ("/(?P<x>a)(?P=x)/", "back-reference"),
        ("/gore(?=scene)/", "lookahead or lookbehind"),
        ("/(?<!i)gore/", "lookahead or lookbehind"),
        ("/(?!x)y/", "lookahead or lookbehind"),
        ("/[\\pL]{1000}/", "repeats too much"),
        ("/.*/", "empty prompt"),
        ("\u200b", "no visible"),
    ],
)
def test_bad_terms_are_refused_with_a_reason(raw, message):
    with pytest.raises(PolicyError, match=message):
        compile_term(raw)


def test_a_term_that_no_longer_compiles_is_skipped_not_fatal():
    assert [t.raw for t in compile_terms(["ok", "/(bad/", "/(a)\\1/"])] == ["ok"]


# ------------------------------------------------------------------------------ the bounded check


@pytest.mark.timeout(60)  # a backtracking engine never returns from these: fail, don't hang the run
async def test_pathological_patterns_finish_within_the_bound():
    checker = Checker()
    try:
        longest = ("a " * MAX_PROMPT_CHARS)[: MAX_PROMPT_CHARS - 1] + "b"
        for prompt in (FREEZING_PROMPT, longest):
            # Returning at all (not the refusal for a missed bound) is the point: no hit, found in time.
            assert await checker.find([prompt, prompt], PATHOLOGICAL) is None
        hit = await checker.find([FREEZING_PROMPT + " xyz"], PATHOLOGICAL)
        assert hit is not None and hit.term.raw == "/(.|\\s)*xyz/"
    finally:
        checker.close()


@pytest.mark.timeout(60)
async def test_pathological_prompt_at_admission_leaves_other_members_served(env):  # noqa: F811
    # Through the real admission path: one guild's admin blocked the patterns, one of its
    # members sends the freezing prompt while a member of another guild asks for a cat.
    admission, store = make(env, DEFAULT_QUEUED_JOBS=50)
    for raw in [*PATHOLOGICAL, "gore"]:
        assert await store.add_term(GUILD, raw, actor_id=1)
    await store.add_term(OTHER_GUILD, "gore", actor_id=1)
    served = asyncio.Event()

    async def other_member():
        assert await admit(admission, Who(user_id=7, guild_id=OTHER_GUILD), prompt="a cat")
        served.set()

    attacker = asyncio.create_task(admit(admission, Who(user_id=42), prompt=FREEZING_PROMPT))
    await asyncio.gather(other_member(), attacker)
    assert served.is_set() and attacker.result().job_id
    with pytest.raises(PolicyError, match="contains `gore`"):
        await admit(admission, Who(user_id=42), prompt=FREEZING_PROMPT + " gore_scene")


async def test_the_loop_serves_others_while_a_check_is_in_flight():
    # One worker, held by a job that waits for the test: the check queued behind it is in flight until
    # released. Meanwhile other coroutines run to completion; then the check finishes, untouched.
    checker = Checker(workers=1, timeout=60)
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait()

    try:
        held = asyncio.create_task(checker.run(hold))
        await asyncio.to_thread(holding.wait)
        check = asyncio.create_task(checker.find([FREEZING_PROMPT], PATHOLOGICAL))
        other = asyncio.Event()
        asyncio.get_running_loop().call_soon(other.set)
        await other.wait()
        assert not check.done()
        release.set()
        await held
        assert await check is None
    finally:
        release.set()
        checker.close()


async def test_a_missed_bound_refuses_and_nothing_piles_up():
    checker = Checker(workers=1, timeout=0.2)
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait()

    try:
        # Bypass run()'s bound for the holder itself: it stands for a check that is still going.
        held = asyncio.get_running_loop().run_in_executor(checker._pool, hold)
        await asyncio.to_thread(holding.wait)
        results = await asyncio.gather(
            *(checker.find(["gore"], ["gore"]) for _ in range(20)), return_exceptions=True
        )
        # Refused, never waved through unchecked.
        assert all(isinstance(r, PolicyError) and "in time" in str(r) for r in results), results
        release.set()
        await held
        # The 20 that never started were cancelled when their bound passed; the pool serves again.
        assert (await checker.find(["gore"], ["gore"])).term.raw == "gore"
    finally:
        release.set()
        checker.close()
