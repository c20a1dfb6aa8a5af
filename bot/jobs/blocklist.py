"""The blocklist: what a blocked term is, how a prompt is normalized, and how terms are matched.

Matching rules (the same text admins read in ``/blocklist add``'s help and the README):

* A plain term matches **whole words**, any case, after :func:`normalize`: Unicode NFKC, case folding,
  accents and other combining marks removed, look-alike letters from other scripts folded to Latin
  (``gоrе`` with Cyrillic о/е, ``ɢᴏʀᴇ``, ``gօre``). Words follow CLIP's tokenizer, which reads a run of
  letters as a word and a run of digits as a number, and splits on everything else: so ``gore_scene``,
  ``gore2 scene``, ``gore-scene`` and ``gore\u200bscene`` (a zero-width space) all contain ``gore``, while
  ``gorges`` and ``ignore`` do not. Zero-width characters *inside* a word are also read as not there
  (``g\u200bore`` is ``gore``): the prompt is checked both ways. Words of a multi-word term may be
  separated by any run of non-letters (``red panda`` matches ``red_panda``).
* ``/like this/`` is a regular expression in RE2 syntax, matched case-insensitively against the same
  normalized text. RE2 runs in time linear in the prompt, whatever the pattern, so no pattern can
  freeze the bot; the price is that back-references (``\\1``) and lookarounds (``(?=``, ``(?<!``) do not
  exist, and ``/blocklist add`` refuses them with the reason.

Matching runs off the event loop on a small dedicated pool (:class:`Checker`) with a time bound; a check
that misses the bound refuses the prompt (it is never let through unchecked), and work that never
started is cancelled instead of piling up behind the pool.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import re2

from bot.jobs import policy

MAX_TERM_CHARS = 200
CHECK_SECONDS = 2.0  # one prompt against a guild's whole blocklist; RE2 needs milliseconds
WORKERS = 2  # one slow guild's check does not hold up everyone else's
MAX_PROGRAM_BYTES = 1 << 20  # RE2's memory for one term; a pattern that needs more is refused

R = TypeVar("R")

# ------------------------------------------------------------------------------------ normalizing

# Characters that render as nothing: used to split words invisibly (g\u200bore, gore\u200bscene).
_INVISIBLE_CODES = [
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0),
    *range(0x200B, 0x2010),  # zero-width space, joiners, direction marks
    *range(0x202A, 0x202F),  # bidirectional embeddings
    *range(0x2060, 0x2070),  # word joiner, invisible operators
    *range(0xFE00, 0xFE10),  # variation selectors
]
_DROP_INVISIBLE = dict.fromkeys(_INVISIBLE_CODES)
_SPLIT_AT_INVISIBLE = dict.fromkeys(_INVISIBLE_CODES, " ")

# Letters from other scripts that look like Latin ones (Unicode confusables, the common subset).
# NFKC already folds fullwidth (ｇ), mathematical (𝐠) and circled letters; these it leaves alone.
_HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
        "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g", "ᴦ": "r", "г": "r", "п": "n", "ь": "b",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ϲ": "c", "ϳ": "j",
        # Armenian
        "օ": "o", "ս": "u", "ց": "g", "հ": "h", "ո": "n", "ա": "w", "զ": "q",
        # Latin look-alikes outside ASCII, small capitals included
        "ı": "i", "ȷ": "j", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ß": "ss",
        "ɑ": "a", "ɩ": "i", "ʀ": "r", "ʏ": "y", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e",
        "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
        "ʙ": "b", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ʟ": "l", "ɴ": "n", "ꜱ": "s", "ꜰ": "f",
    }
)  # fmt: skip


def normalize(text: str, *, split_invisible: bool = False) -> str:
    """Text as a filter should see it: ``"Ｇ\u200bÖＲЕ"`` → ``"gore"``.

    NFKC folds compatibility forms (fullwidth, math alphabets, ligatures); casefold is Unicode-aware
    lowercasing; invisible characters are dropped (or, with ``split_invisible``, read as spaces, as
    CLIP reads them); NFD then dropping combining marks removes accents (and Zalgo stacks); homoglyphs
    become their Latin twins. Whitespace runs become one space.
    """
    invisible = _SPLIT_AT_INVISIBLE if split_invisible else _DROP_INVISIBLE
    text = unicodedata.normalize("NFKC", text).casefold().translate(invisible)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    text = text.translate(_HOMOGLYPHS)
    # Homoglyph folding can produce new composable sequences; a second NFKC keeps the output stable.
    return " ".join(unicodedata.normalize("NFKC", text).split())


def views(text: str) -> list[str]:
    """The ways a prompt is read: invisible characters dropped, and read as word breaks."""
    joined = normalize(text)
    split = normalize(text, split_invisible=True)
    return [joined] if split == joined else [joined, split]


# ------------------------------------------------------------------------------------------ terms


def _options(*, case_sensitive: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False  # a refused pattern is the admin's answer, not a line on stderr
    return options


@dataclass(frozen=True, slots=True)
class Term:
    """One blocklist entry: ``raw`` as the admin typed it, ``pattern`` as it is matched (RE2)."""

    raw: str
    pattern: re2._Regexp[str]
    is_regex: bool


def is_regex(raw: str) -> bool:
    raw = raw.strip()
    return len(raw) >= 3 and raw.startswith("/") and raw.endswith("/")


def _edge(char: str, *, before: bool) -> str:
    """What must sit next to a literal's first or last character for it to be a whole word: a letter
    next to a letter (or a digit next to a digit) would make it part of a longer word or number."""
    category = unicodedata.category(char)[0]
    cls = {"L": r"\pL", "N": r"\pN"}.get(category)
    if cls is None:  # punctuation at the edge (c++, !!): no boundary to keep
        return ""
    return rf"(?:^|[^{cls}])" if before else rf"(?:[^{cls}]|$)"


def _unusable(body: str, error: str) -> policy.PolicyError:
    """An admin-facing reason for a pattern RE2 refused."""
    if re.search(r"\(\?<?[=!]", body):
        why = "it uses a lookahead or lookbehind (`(?=`, `(?!`, `(?<=`, `(?<!`)"
    elif re.search(r"\\[1-9]|\(\?P=|\\k<|\\g<", body):
        why = "it uses a back-reference (like `\\1`)"
    elif "too large" in error or "repetition" in error:
        why = f"it repeats too much to match quickly ({error}); use smaller repeat counts"
    else:
        why = f"RE2 can't read it: {error}"
    return policy.PolicyError(
        f"That regular expression can't be used: {why}. Blocklist patterns use RE2 syntax, which always "
        "matches in linear time, so back-references and lookarounds are not available."
    )


@functools.lru_cache(maxsize=4096)  # every admission compiles its guild's terms; most are seen before
def compile_term(raw: str) -> Term:
    """A term is a regular expression when written ``/like this/``, else a whole-word literal.

    Raises PolicyError (with a message for the admin) for an empty, overlong or unusable term. Cost is
    bounded: at most MAX_TERM_CHARS characters, and RE2 gives up past MAX_PROGRAM_BYTES.
    """
    raw = raw.strip()
    if not raw:
        raise policy.PolicyError("The term is empty.")
    if len(raw) > MAX_TERM_CHARS:
        raise policy.PolicyError(f"Terms are at most {MAX_TERM_CHARS} characters (this one is {len(raw)}).")
    if is_regex(raw):
        body = raw[1:-1]
        try:
            pattern = re2.compile(body, _options(case_sensitive=False))
        except re2.error as exc:
            error = exc.args[0] if exc.args else ""
            error = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            raise _unusable(body, error) from None
        if pattern.search("") is not None:
            raise policy.PolicyError(
                "That regular expression matches an empty prompt, so it would block everything."
            )
        return Term(raw, pattern, is_regex=True)
    words = normalize(raw).split()
    if not words:
        raise policy.PolicyError("The term has no visible characters.")
    # Words of a phrase may be split by any non-letters (spaces, _, -, zero-width characters).
    body = r"[^\pL\pN]+".join(re2.escape(w) for w in words)
    first, last = words[0][0], words[-1][-1]
    source = f"{_edge(first, before=True)}({body}){_edge(last, before=False)}"
    return Term(raw, re2.compile(source, _options(case_sensitive=True)), is_regex=False)


def compile_terms(raws: Iterable[str]) -> list[Term]:
    """Terms from the database; one that no longer compiles (a hand edit, an older version's regex
    syntax) is skipped, not fatal."""
    terms: list[Term] = []
    for raw in raws:
        try:
            terms.append(compile_term(raw))
        except policy.PolicyError:
            continue
    return terms


@dataclass(frozen=True, slots=True)
class Hit:
    term: Term
    matched: str  # the normalized text the term matched
    index: int  # which of the texts (prompt, negative prompt) it was found in


class CheckTimeout(TimeoutError):
    """A check ran past its deadline; the prompt counts as not checked."""


def find_blocked(texts: Sequence[str], terms: Iterable[Term], *, deadline: float | None = None) -> Hit | None:
    """The first term found in any of ``texts`` (prompt, negative prompt), or None. Past ``deadline``
    (``time.monotonic()``) it stops and raises CheckTimeout rather than go on for a caller that left."""
    terms = list(terms)
    for index, text in enumerate(texts):
        if not text:
            continue
        for view in views(text):
            for term in terms:
                if deadline is not None and time.monotonic() > deadline:
                    raise CheckTimeout
                match = term.pattern.search(view)
                if match is not None:
                    return Hit(term, match.group(0) if term.is_regex else match.group(1), index)
    return None


def _find(texts: Sequence[str], raws: Sequence[str], deadline: float) -> Hit | None:
    return find_blocked(texts, compile_terms(raws), deadline=deadline)


class Checker:
    """Runs blocklist work off the event loop, on WORKERS threads of its own, each call within
    ``timeout`` seconds. A call that waited in line past its bound is cancelled before it starts; one
    that started stops at its deadline; so a burst of checks cannot grow the pool or its backlog."""

    def __init__(self, *, timeout: float = CHECK_SECONDS, workers: int = WORKERS) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blocklist")

    async def run(self, fn: Callable[..., R], *args: object) -> R:
        """``fn(*args)`` on the pool; TimeoutError past the bound."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._pool, fn, *args), self.timeout)

    async def find(self, texts: Sequence[str], raws: Sequence[str]) -> Hit | None:
        """The first blocked term in ``texts``; PolicyError if the check could not finish in time."""
        deadline = time.monotonic() + self.timeout
        try:
            return await self.run(_find, list(texts), tuple(raws), deadline)
        except TimeoutError:  # CheckTimeout too: refuse, never let an unchecked prompt through
            raise policy.PolicyError(
                "I couldn't check your prompt against this server's blocklist in time, so I didn't queue "
                "it. Please try again in a moment."
            ) from None

    async def compile(self, raw: str) -> Term:
        """:func:`compile_term` off the loop, for /blocklist add."""
        try:
            return await self.run(compile_term, raw)
        except TimeoutError:
            raise policy.PolicyError("That term took too long to check; please simplify it.") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


CHECKER = Checker()  # the bot's one pool: threads start on first use
