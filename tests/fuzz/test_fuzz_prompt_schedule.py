"""Prompt editing, fuzzed: any prompt gives a schedule A1111's lookup can use, or the documented refusal."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from engine import bounds
from engine.prompt_schedule import PromptScheduleError, prompt_schedule

from .strategies import a1111_prompt, assert_friendly

PIECES = ["[", "]", "(", ")", ":", "|", "\\", " ", "a", "b", "3", "0.5", "1.", "-1", "1e999", "BREAK"]
EDITING = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)


@example("[a:b:1e999]", 10)  # inf: A1111 raises; here it is the last step
@example("[a|b][c|d|e][f|g|h|i|j]", 150)
@example("[" * 1500, 150)
@given(st.one_of(EDITING, a1111_prompt), st.sampled_from([1, 2, 7, bounds.STEPS.hi, 2 * bounds.STEPS.hi]))
def test_a_schedule_is_usable_or_refused(prompt, steps):
    try:
        schedule = prompt_schedule(prompt, steps)
    except PromptScheduleError as exc:
        assert_friendly(str(exc))
        return
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
    assert len({text for _, text in schedule}) <= bounds.PROMPT_SCHEDULE_TEXTS
    assert all(len(text) <= len(prompt) for _, text in schedule)  # a reading of the prompt, never longer
