"""AUTOMATIC1111's prompt editing and alternation: which text a prompt stands for at each sampling step.

``[from:to:when]`` reads ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to`` after
``when``, ``[from::when]`` removes ``from`` after it. A ``when`` written with a decimal point is a fraction of
the steps (``0.5``, ``.25``, also ``1.`` which is all of them), one without is a step number. ``[a|b|c]``
alternates: ``a`` on step 1, ``b`` on step 2, ``c`` on 3, ``a`` again on 4... Both nest, and emphasis inside
them is kept as text for :mod:`engine.prompts` to read.

:func:`prompt_schedule` gives A1111 1.10's list of ``(end_at_step, text)``: a text is used at sampling step
``s`` (0-based model call) by the first entry with ``s <= end_at_step``. The steps counted are the sampler's
model calls (A1111 counts two per step for second-order samplers).

The grammar is A1111's (a lark grammar there), read here by a hand-written parser that picks the same
reading: outside any bracket a ``[``, ``(``, ``]``, ``)`` or ``:`` that does not open a complete
construct is plain text; a ``|`` outside an alternation, or a backslash with nothing after it, makes the
whole prompt plain text (no editing at all). Parsing is linear in the prompt's length (each position is
parsed once) and nesting is bounded (:data:`MAX_DEPTH`); the number of distinct texts a schedule may hold
is bounded by :data:`engine.bounds.PROMPT_SCHEDULE_TEXTS` (each is encoded separately).

``AND`` (composable diffusion, :func:`split_and`) is refused by the engine: see engine/README.md.

Torch-free: the request check (engine/requests.py) uses it before a job is queued.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from engine import bounds

# A plain run: anything but the grammar's special characters, or a backslash and the character after it
# ("." as in A1111's grammar: not a newline).
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_SPACE = re.compile(r"\s+")
# lark's SIGNED_NUMBER, which A1111's grammar uses for ``when``: ASCII digits, optional exponent.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)")
# Brackets nested deeper than this make the prompt plain text, as a prompt that does not parse (each level is
# a few Python frames; A1111 would still read editing inside them, but emphasis reads the same either way).
MAX_DEPTH = 40

_AND = re.compile(r"\bAND\b")
# A1111's composable-diffusion weight: a subprompt ending in ":number" (spaces allowed around the colon).
_TRAILING_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*\Z")
_TRAILING_SPACE = re.compile(r"\s*\Z")


class PromptScheduleError(ValueError):
    """A prompt whose editing the engine will not run (too many texts, ``AND``)."""


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``; ``before`` is None in the ``[after:when]`` form."""

    before: tuple[_Part, ...] | None
    after: tuple[_Part, ...]
    when: str  # the number as written: a "." makes it a fraction of the steps


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple[_Part, ...], ...]


_Part = str | _Edit | _Alternation


class _TooDeep(Exception):
    pass


class _Parser:
    """A1111's schedule grammar over one prompt; ``None`` from a method means "does not parse here"."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: dict[int, tuple[tuple[_Part, ...], int]] = {}
        self.constructs: dict[int, tuple[tuple[_Part, ...], int] | None] = {}
        self.depth = 0

    def prompt(self, i: int) -> tuple[tuple[_Part, ...], int]:
        """The longest run of plain text and complete constructs from ``i`` (maybe empty)."""
        if i in self.prompts:
            return self.prompts[i]
        text, start = self.text, i
        parts: list[_Part] = []
        while i < len(text):
            m = _PLAIN.match(text, i)
            if m is not None:
                parts.append(m.group(0))
                i = m.end()
                continue
            if text[i] not in "[(":
                break
            found = self.construct(i)
            if found is None:
                break
            parts.extend(found[0])
            i = found[1]
        self.prompts[start] = result = (tuple(parts), i)
        return result

    def construct(self, i: int) -> tuple[tuple[_Part, ...], int] | None:
        """``(...)``, ``(...:...)``, ``[...]``, ``[...:n]``, ``[...:...:n]`` or ``[...|...]`` at ``i``."""
        if i in self.constructs:
            return self.constructs[i]
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeep
        try:
            found = self._round(i) if self.text[i] == "(" else self._square(i)
        finally:
            self.depth -= 1
        self.constructs[i] = found
        return found

    def _at(self, i: int) -> str:
        return self.text[i] if i < len(self.text) else ""

    def _round(self, i: int) -> tuple[tuple[_Part, ...], int] | None:
        first, j = self.prompt(i + 1)
        if self._at(j) == ")":
            return ("(", *first, ")"), j + 1
        if self._at(j) != ":":
            return None
        second, k = self.prompt(j + 1)
        if self._at(k) != ")":
            return None
        return ("(", *first, ":", *second, ")"), k + 1

    def _square(self, i: int) -> tuple[tuple[_Part, ...], int] | None:
        first, j = self.prompt(i + 1)
        sep = self._at(j)
        if sep == "]":
            return ("[", *first, "]"), j + 1
        if sep == "|":
            options = [first]
            while self._at(j) == "|":
                option, j = self.prompt(j + 1)
                options.append(option)
            if self._at(j) != "]":
                return None
            return (_Alternation(tuple(options)),), j + 1
        if sep != ":":
            return None
        when = self._when(j + 1)  # [after:when]
        if when is not None:
            return (_Edit(None, first, when[0]),), when[1]
        second, k = self.prompt(j + 1)  # [before:after:when]
        if self._at(k) != ":":
            return None
        when = self._when(k + 1)
        if when is None:
            return None
        return (_Edit(first, second, when[0]),), when[1]

    def _when(self, i: int) -> tuple[str, int] | None:
        """Optional spaces, a number, optional spaces and the closing ``]``."""
        if m := _SPACE.match(self.text, i):
            i = m.end()
        number = _NUMBER.match(self.text, i)
        if number is None:
            return None
        i = number.end()
        if m := _SPACE.match(self.text, i):
            i = m.end()
        if self._at(i) != "]":
            return None
        return number.group(0), i + 1

    def start(self) -> tuple[_Part, ...] | None:
        """The whole prompt: constructs where they parse, stray brackets and colons as text; None when a
        ``|`` is outside any alternation or a backslash escapes nothing (A1111 then uses the prompt as is)."""
        text, i = self.text, 0
        parts: list[_Part] = []
        while i < len(text):
            found, end = self.prompt(i)
            parts.extend(found)
            i = end
            if i < len(text):
                if text[i] not in "[]():":
                    return None
                parts.append(text[i])
                i += 1
        return tuple(parts)


def _step_of(when: str, steps: int) -> int:
    value = float(when)
    if "." in when:
        value *= steps
    if value >= steps:  # also inf ("1e999"), which A1111 fails on
        return steps
    return int(value)


def _collect(parts: tuple[_Part, ...], steps: int, found: set[int]) -> bool:
    """Adds each edit's step (when at least 1) to ``found``; True when there is an alternation (anywhere,
    also inside a branch that is never used, as in A1111)."""
    alternates = False
    for part in parts:
        if isinstance(part, _Edit):
            at = _step_of(part.when, steps)
            if at >= 1:
                found.add(at)
            if part.before is not None:
                alternates |= _collect(part.before, steps, found)
            alternates |= _collect(part.after, steps, found)
        elif isinstance(part, _Alternation):
            alternates = True
            for option in part.options:
                _collect(option, steps, found)
    return alternates


def _render(parts: tuple[_Part, ...], step: int, steps: int, out: list[str]) -> None:
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, _Edit):
            if step <= _step_of(part.when, steps):
                if part.before is not None:
                    _render(part.before, step, steps, out)
            else:
                _render(part.after, step, steps, out)
        else:
            _render(part.options[(step - 1) % len(part.options)], step, steps, out)


@lru_cache(maxsize=256)
def prompt_schedule(prompt: str, steps: int) -> tuple[tuple[int, str], ...]:
    """A1111 1.10's ``(end_at_step, text)`` list of ``prompt`` over ``steps`` model calls, in step order.

    >>> prompt_schedule("a [cat:dog:0.5] in the snow", 10)
    ((5, 'a cat in the snow'), (10, 'a dog in the snow'))

    Raises :class:`PromptScheduleError` when the schedule has more than
    :data:`engine.bounds.PROMPT_SCHEDULE_TEXTS` distinct texts."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    try:
        parts = _Parser(prompt).start()
    except _TooDeep:  # see MAX_DEPTH
        parts = None
    if parts is None:
        return ((steps, prompt),)
    points = {steps}
    if _collect(parts, steps, points):
        points.update(range(1, steps + 1))
    schedule = []
    texts: set[str] = set()
    for step in sorted(points):
        out: list[str] = []
        _render(parts, step, steps, out)
        text = "".join(out)
        texts.add(text)
        if len(texts) > bounds.PROMPT_SCHEDULE_TEXTS:
            raise PromptScheduleError(
                f"the prompt's editing and alternation make more than {bounds.PROMPT_SCHEDULE_TEXTS} "
                "different prompts over its steps; use fewer [a:b:n] or [a|b] groups"
            )
        schedule.append((step, text))
    return tuple(schedule)


def schedule_texts(prompt: str, steps: int) -> list[str]:
    """The distinct texts of ``prompt``'s schedule, in order of first use."""
    return list(dict.fromkeys(text for _, text in prompt_schedule(prompt, steps)))


def entry_at(schedule: Sequence[tuple[int, object]], step: int) -> int:
    """The index of the entry used at model call ``step`` (0-based): A1111's lookup, which takes the first
    entry whose ``end_at_step`` is at least ``step``, and the first entry when none is."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable-diffusion reading of a prompt: ``AND`` (a word of its own, upper case) separates
    subprompts, each of which may end in ``:weight``; trailing spaces are dropped.

    >>> split_and("a cat AND a dog:0.5")
    [('a cat ', 1.0), (' a dog', 0.5)]
    """
    out = []
    for sub in _AND.split(prompt):
        m = _TRAILING_WEIGHT.search(sub)
        if m is not None:
            out.append((sub[: m.start()], float(m.group(1))))
        else:
            out.append((_TRAILING_SPACE.sub("", sub), 1.0))
    return out


def composable_text(prompt: str) -> str:
    """The text the engine encodes for ``prompt`` (as A1111 does: trailing spaces, and a trailing ``:1``
    weight, dropped), or :class:`PromptScheduleError` for composable diffusion, which the engine does not
    run: ``AND``, or a whole-prompt weight other than 1."""
    parts = split_and(prompt)
    if len(parts) > 1:
        raise PromptScheduleError(
            "AND (A1111's composable diffusion) is not supported; write 'and' in lower case to keep it "
            "as a word"
        )
    text, weight = parts[0]
    if weight != 1.0:
        raise PromptScheduleError(
            f"a prompt ending in ':{weight:g}' asks for A1111's composable-diffusion weight, which is not "
            "supported; wrap the words in parentheses to weight them, e.g. (a red car:1.2)"
        )
    return text
