"""Per-guild limits and the blocklist: pure functions over plain data, tested without Discord or a database.

Resolution order (documented for admins in /limits show):

1. a **user** override in the guild wins outright;
2. else the member's **roles**: of the roles that set the limit, the *most permissive* value counts
   (the highest quota, the shortest cooldown), so giving someone an extra role never takes anything
   away from them;
3. else the **guild** override;
4. else the bot's default from settings (``DEFAULT_DAILY_IMAGES`` ...).

``priority`` is resolved the same way; it picks the fair queue's tier (higher runs first), which is how
an admin gives a role priority: ``/limits set setting:priority value:1 role:@Patrons``.

Daily quotas reset at 00:00 UTC. Blocked terms are matched after :func:`normalize` (Unicode NFKC,
case folding, zero-width and combining marks removed, common homoglyphs folded) so ``Ｇ​ÖＲЕ`` still
matches ``gore``.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from bot.jobs import policy
from engine import bounds


class LimitName(StrEnum):
    DAILY_IMAGES = "daily_images"
    QUEUED_JOBS = "queued_jobs"
    COOLDOWN_SECONDS = "cooldown_seconds"
    MAX_STEPS = "max_steps"
    MAX_PIXELS = "max_pixels"
    MAX_COUNT = "max_count"
    ALLOW_IMG2IMG = "allow_img2img"
    PRIORITY = "priority"


class Scope(StrEnum):
    GUILD = "guild"
    ROLE = "role"
    USER = "user"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    name: LimitName
    lo: int
    hi: int
    help: str
    lower_is_looser: bool = False  # cooldowns: a shorter wait is the more permissive value
    boolean: bool = False  # shown as yes/no, set with 1/0

    def check(self, value: int) -> int:
        """``value`` if it is in range, else a PolicyError an admin can act on."""
        if self.boolean and value not in (0, 1):
            raise policy.PolicyError(f"`{self.name}` is 1 (allowed) or 0 (not allowed), not {value}.")
        if not self.lo <= value <= self.hi:
            raise policy.PolicyError(
                f"`{self.name}` must be between {self.lo:,} and {self.hi:,} (you gave {value:,})."
            )
        return value

    def looser(self, a: int, b: int) -> int:
        return min(a, b) if self.lower_is_looser else max(a, b)

    def show(self, value: int) -> str:
        if self.boolean:
            return "yes" if value else "no"
        if self.name is LimitName.COOLDOWN_SECONDS:
            return f"{value:,} s"
        return f"{value:,}"


SPECS: Mapping[LimitName, LimitSpec] = {
    s.name: s
    for s in (
        LimitSpec(LimitName.DAILY_IMAGES, 0, 1_000_000, "images per member per day here (resets 00:00 UTC)"),
        LimitSpec(LimitName.QUEUED_JOBS, 0, 1_000, "jobs one member may have queued or running here"),
        LimitSpec(LimitName.COOLDOWN_SECONDS, 0, 86_400, "seconds between two jobs of one member", True),
        # The hard bounds an admin may set these within are engine/bounds.py's table.
        LimitSpec(LimitName.MAX_STEPS, bounds.STEPS.lo, bounds.STEPS.hi, "most sampling steps per job"),
        LimitSpec(
            LimitName.MAX_PIXELS, bounds.PIXELS.lo, bounds.PIXELS.hi, "most pixels per image (width × height)"
        ),
        LimitSpec(LimitName.MAX_COUNT, bounds.COUNT.lo, bounds.COUNT.hi, "most images per job"),
        LimitSpec(
            LimitName.ALLOW_IMG2IMG, 0, 1, "variations and upscales allowed (1) or not (0)", boolean=True
        ),
        LimitSpec(LimitName.PRIORITY, -10, 10, "queue priority; higher runs first (0: normal)"),
    )
}


@dataclass(frozen=True, slots=True)
class Override:
    scope: Scope
    target_id: int
    name: LimitName
    value: int


@dataclass(frozen=True, slots=True)
class Effective:
    """Every limit's value for one member, and where each came from (``default``, ``guild``, ...)."""

    values: Mapping[LimitName, int]
    sources: Mapping[LimitName, str]

    def __getitem__(self, name: LimitName) -> int:
        return self.values[name]

    def policy_limits(self) -> policy.Limits:
        return policy.Limits(
            max_steps=self.values[LimitName.MAX_STEPS],
            max_pixels=self.values[LimitName.MAX_PIXELS],
            max_count=self.values[LimitName.MAX_COUNT],
        )


def resolve(
    defaults: Mapping[LimitName, int],
    overrides: Iterable[Override],
    *,
    user_id: int | None = None,
    role_ids: Iterable[int] = (),
) -> Effective:
    """The effective limits for a member: user > most permissive role > guild > settings default."""
    roles = set(role_ids)
    guild: dict[LimitName, int] = {}
    user: dict[LimitName, int] = {}
    by_role: dict[LimitName, int] = {}
    for o in overrides:
        if o.scope is Scope.GUILD:
            guild[o.name] = o.value
        elif o.scope is Scope.USER and o.target_id == user_id:
            user[o.name] = o.value
        elif o.scope is Scope.ROLE and o.target_id in roles:
            prev = by_role.get(o.name)
            by_role[o.name] = o.value if prev is None else SPECS[o.name].looser(prev, o.value)
    values: dict[LimitName, int] = {}
    sources: dict[LimitName, str] = {}
    for name in LimitName:
        for source, table in (("user", user), ("role", by_role), ("guild", guild)):
            if name in table:
                values[name], sources[name] = table[name], source
                break
        else:
            values[name], sources[name] = defaults[name], "default"
    return Effective(values, sources)


# ------------------------------------------------------------------------------------------- time


def day_start(now: dt.datetime) -> dt.datetime:
    """00:00 UTC of ``now``'s day: the start of the daily quota window."""
    now = now.astimezone(dt.UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def next_daily_reset(now: dt.datetime) -> dt.datetime:
    return day_start(now) + dt.timedelta(days=1)


def month_start(now: dt.datetime) -> dt.datetime:
    return day_start(now).replace(day=1)


def when(moment: dt.datetime, *, daily: bool = False) -> str:
    """A reset time for a refusal: Discord renders ``<t:…:R>`` in the reader's own time zone ("in 3
    hours"); the UTC clock time next to it is there for logs and for readers whose client shows raw text."""
    stamp = int(moment.timestamp())
    if daily:
        return f"at 00:00 UTC (<t:{stamp}:R>)"
    return f"<t:{stamp}:R> (at {moment.astimezone(dt.UTC):%H:%M:%S} UTC)"


# ------------------------------------------------------------------------------------ normalizing

# Characters that render as nothing: used to split words invisibly (g\u200bore).
_INVISIBLE = dict.fromkeys(
    [
        *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0),
        *range(0x200B, 0x2010),  # zero-width space, joiners, direction marks
        *range(0x202A, 0x202F),  # bidirectional embeddings
        *range(0x2060, 0x2070),  # word joiner, invisible operators
        *range(0xFE00, 0xFE10),  # variation selectors
    ]
)

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
        # Latin look-alikes outside ASCII
        "ı": "i", "ȷ": "j", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ß": "ss",
        "ɑ": "a", "ɩ": "i", "ʀ": "r", "ʏ": "y", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e",
        "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    }
)  # fmt: skip


def normalize(text: str) -> str:
    """Text as a filter should see it: ``"Ｇ\u200bÖＲЕ"`` → ``"gore"``.

    NFKC folds compatibility forms (fullwidth, math alphabets, ligatures); casefold is Unicode-aware
    lowercasing; invisible characters are dropped; NFD then dropping combining marks removes accents
    (and Zalgo stacks); homoglyphs from Cyrillic and Greek become their Latin twins. Whitespace runs
    become one space.
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_INVISIBLE)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    text = text.translate(_HOMOGLYPHS)
    # Homoglyph folding can produce new composable sequences; a second NFKC keeps the output stable.
    return " ".join(unicodedata.normalize("NFKC", text).split())


# ---------------------------------------------------------------------------------------- terms

MAX_TERM_CHARS = 200
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*(?:[+*]|\{\d*,)")


@dataclass(frozen=True, slots=True)
class Term:
    """One blocklist entry: ``raw`` as the admin typed it, ``pattern`` as it is matched."""

    raw: str
    pattern: re.Pattern[str]

    @property
    def is_regex(self) -> bool:
        return is_regex(self.raw)


def is_regex(raw: str) -> bool:
    raw = raw.strip()
    return len(raw) >= 3 and raw.startswith("/") and raw.endswith("/")


def compile_term(raw: str) -> Term:
    """A term is a regular expression when written ``/like this/``, else a whole-word literal.

    Raises PolicyError (with a message for the admin) for an empty, overlong or unusable term. Regexes
    with a quantified group that itself contains a quantifier (``(a+)+``) are refused: on a long prompt
    they can take exponential time, and the bot matches on its event loop.
    """
    raw = raw.strip()
    if not raw:
        raise policy.PolicyError("The term is empty.")
    if len(raw) > MAX_TERM_CHARS:
        raise policy.PolicyError(f"Terms are at most {MAX_TERM_CHARS} characters (this one is {len(raw)}).")
    if is_regex(raw):
        body = raw[1:-1]
        if _NESTED_QUANTIFIER.search(body):
            raise policy.PolicyError(
                "That regular expression repeats a group that itself repeats (like `(a+)+`), which can "
                "make matching take forever. Please write it without the nested repetition."
            )
        try:
            pattern = re.compile(body, re.IGNORECASE)
        except re.error as exc:
            raise policy.PolicyError(f"That regular expression does not compile: {exc}.") from None
        if pattern.search(""):
            raise policy.PolicyError(
                "That regular expression matches an empty prompt, so it would block everything."
            )
        return Term(raw, pattern)
    words = normalize(raw).split()
    if not words:
        raise policy.PolicyError("The term has no visible characters.")
    # Whole words: "ass" blocks "ass" but not "class"; multi-word terms match across any whitespace.
    body = r"\s+".join(re.escape(w) for w in words)
    return Term(raw, re.compile(rf"(?<!\w){body}(?!\w)"))


def compile_terms(raws: Iterable[str]) -> list[Term]:
    """Terms from the database; one that no longer compiles (a hand edit) is skipped, not fatal."""
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


def find_blocked(texts: Iterable[str], terms: Iterable[Term]) -> Hit | None:
    """The first term found in any of ``texts`` (prompt, negative prompt), or None."""
    prepared = [normalize(t) for t in texts if t]
    terms = list(terms)
    for text in prepared:
        for term in terms:
            match = term.pattern.search(text)
            if match:
                return Hit(term, match.group(0))
    return None
