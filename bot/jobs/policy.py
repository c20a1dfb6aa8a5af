"""Parameter policy: inline ``--flags``, aspect ratios, and validation. Pure functions over plain data,
tested without Discord, a database or a model. Every error is a :class:`PolicyError` whose text is
shown to the user as it is."""

from __future__ import annotations

import math
import random
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from engine import bounds, sampler_names
from engine.sampler_names import UnknownSamplerError

MAX_PROMPT_CHARS = bounds.PROMPT_CHARS
MAX_SEED = bounds.SEED.hi
ASPECTS: tuple[str, ...] = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9")


class PolicyError(ValueError):
    """A request we refuse; the message is friendly and says what to change."""


@dataclass(frozen=True, slots=True)
class Params:
    """What a user asked for, before validation (None: not given)."""

    prompt: str = ""
    negative: str | None = None
    aspect: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    count: int | None = None
    model: str | None = None
    strength: float | None = None
    scheduler: str | None = None  # A1111's schedule type
    clip_skip: int | None = None

    def merged_over(self, base: Params) -> Params:
        """These values where given, else ``base``'s (options win over inline flags)."""
        return replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})


@dataclass(frozen=True, slots=True)
class Limits:
    """A guild's limits for one member; each within engine/bounds.py's table (checked again in resolve)."""

    max_steps: int = 50
    max_pixels: int = 1024 * 1024
    max_count: int = 4

    @classmethod
    def table(cls) -> Limits:
        """The loosest limits any guild may set: engine/bounds.py's. Resolving against these checks
        everything that does not depend on who asks, where, without the database."""
        return cls(max_steps=bounds.STEPS.hi, max_pixels=bounds.PIXELS.hi, max_count=bounds.COUNT.hi)


@dataclass(frozen=True, slots=True)
class Defaults:
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "DPM++ 2M Karras"
    size: int = 512  # the side of a 1:1 image; other aspects keep its pixel count
    count: int = 4
    # The model family's trained sizes (engine/families.py: SDXL's); an aspect maps to the nearest one.
    buckets: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Resolved:
    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    sampler: str
    width: int
    height: int
    count: int
    model: str | None
    strength: float
    scheduler: str = sampler_names.AUTOMATIC  # the schedule type that runs (Karras for DPM++ 2M...)
    clip_skip: int = 0  # 0: the model's default


# ------------------------------------------------------------------------------------------ flags

_FLAG_ALIASES = {
    "ar": "aspect",
    "aspect": "aspect",
    "no": "negative",
    "seed": "seed",
    "steps": "steps",
    "cfg": "cfg",
    "sampler": "sampler",
    "count": "count",
    "n": "count",
    "model": "model",
    "strength": "strength",
    "scheduler": "scheduler",
    "schedule": "scheduler",
    "clip-skip": "clip_skip",
    "clip_skip": "clip_skip",
    "clipskip": "clip_skip",
}
_KNOWN_FLAGS = ("ar", "seed", "no", "steps", "cfg", "sampler", "scheduler", "clip-skip", "count", "model")
_FLAG_START = re.compile(r"(?:^|\s)--([A-Za-z][\w-]*)")


def parse_flags(text: str) -> Params:
    """Split Midjourney-style flags off a prompt: ``a lighthouse --ar 16:9 --no fog, boats --seed 7``.

    A flag's value runs to the next flag, so ``--no fog, boats`` and ``--sampler DPM++ 2M Karras``
    work unquoted. Unknown or malformed flags raise :class:`PolicyError` naming the flag.
    """
    matches = list(_FLAG_START.finditer(text))
    prompt = (text[: matches[0].start()] if matches else text).strip()
    values: dict[str, str] = {}
    for i, match in enumerate(matches):
        name = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[match.end() : end].strip()
        key = _FLAG_ALIASES.get(name)
        if key is None:
            known = ", ".join(f"--{n}" for n in _KNOWN_FLAGS)
            raise PolicyError(f"Unknown flag `--{name}`. Flags I know: {known}.")
        if not value:
            raise PolicyError(
                f"Flag `--{name}` needs a value, e.g. `{_FLAG_EXAMPLES.get(key, '--' + name + ' 1')}`."
            )
        if key in values:
            raise PolicyError(f"Flag `--{name}` is given twice.")
        values[key] = _unquote(value)
    return Params(
        prompt=prompt,
        negative=values.get("negative"),
        aspect=values.get("aspect"),
        seed=_flag_int("seed", values.get("seed")),
        steps=_flag_int("steps", values.get("steps")),
        cfg=_flag_float("cfg", values.get("cfg")),
        sampler=values.get("sampler"),
        count=_flag_int("count", values.get("count")),
        model=values.get("model"),
        strength=_flag_float("strength", values.get("strength")),
        scheduler=values.get("scheduler"),
        clip_skip=_flag_int("clip_skip", values.get("clip_skip")),
    )


_FLAG_EXAMPLES = {
    "aspect": "--ar 16:9",
    "negative": "--no blurry, text",
    "seed": "--seed 1234",
    "steps": "--steps 30",
    "cfg": "--cfg 7.5",
    "sampler": "--sampler Euler a",
    "count": "--count 2",
    "model": "--model dreamshaper",
    "strength": "--strength 0.6",
    "scheduler": "--scheduler Karras",
    "clip_skip": "--clip-skip 2",
}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        try:
            return " ".join(shlex.split(value))
        except ValueError:
            return value[1:-1]
    return value


def _flag_int(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not re.fullmatch(r"[+-]?\d{1,12}", raw):
        raise PolicyError(
            f"Flag `--{name}` needs a whole number, not `{raw[:40]}` (e.g. `{_FLAG_EXAMPLES[name]}`)."
        )
    return int(raw)


def _flag_float(name: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PolicyError(
            f"Flag `--{name}` needs a number, not `{raw[:40]}` (e.g. `{_FLAG_EXAMPLES[name]}`)."
        ) from None
    if not math.isfinite(value):
        raise PolicyError(f"Flag `--{name}` needs a finite number.")
    return value


# -------------------------------------------------------------------------------------- aspects


def aspect_size(aspect: str, side: int = 512, buckets: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    """Width and height, multiples of 64, near ``side``² pixels with the given ratio (``16:9`` etc.); with
    ``buckets``, the one whose ratio is nearest."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*[:x×/]\s*(\d{1,3})\s*", aspect)
    if not match:
        raise PolicyError(
            f"Aspect `{aspect[:20]}` is not a ratio like `16:9`. Try one of {', '.join(ASPECTS)}."
        )
    w, h = int(match.group(1)), int(match.group(2))
    if not w or not h or max(w, h) / min(w, h) > 4:
        raise PolicyError(f"Aspect `{w}:{h}` is too extreme; keep it within 4:1 (e.g. {', '.join(ASPECTS)}).")
    if buckets:
        return min(buckets, key=lambda size: abs(math.log(size[0] / size[1]) - math.log(w / h)))
    pixels = side * side
    width = math.sqrt(pixels * w / h)
    height = width * h / w
    return max(64, round(width / 64) * 64), max(64, round(height / 64) * 64)


# ----------------------------------------------------------------------------------- validation


def find_sampler(sampler: str | None, scheduler: str | None, default: str) -> sampler_names.Resolved:
    """The A1111 sampler and the schedule type that run for what a member gave (``sampler``: a name, an
    alias or a combined name like ``Euler Karras``; ``scheduler``: a schedule type), or a PolicyError
    naming the nearest choice. ``default``'s schedule type (``DPM++ 2M Karras``) yields to the member's."""
    try:
        if sampler is None:
            base, own = sampler_names.split_combined(sampler_names.canonical_sampler(default))
            return sampler_names.resolve(base, scheduler or own)
        name = sampler_names.canonical_sampler(sampler)
        _, named = sampler_names.split_combined(name)
        asked = sampler_names.schedule_label(scheduler) if scheduler is not None else None
        if named is not None and asked not in (None, sampler_names.AUTOMATIC, named):
            raise PolicyError(
                f"Sampler `{name}` names the `{named}` schedule type, and you asked for `{asked}`: give "
                f"the sampler without it, e.g. `--sampler {name[: -len(named) - 1]} --scheduler {asked}`."
            )
        return sampler_names.resolve(name, scheduler)
    except UnknownSamplerError as exc:
        text = str(exc)
        raise PolicyError(text[:1].upper() + text[1:].removesuffix(".") + ".") from None


def resolve(
    params: Params, defaults: Defaults, limits: Limits, *, rng: random.Random | None = None
) -> Resolved:
    """Fill in defaults and check every value against the limits; raise PolicyError on the first problem."""
    prompt = params.prompt.strip()
    if not prompt:
        raise PolicyError("Your prompt is empty: describe the picture, e.g. `/imagine a lighthouse at dusk`.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PolicyError(f"Your prompt is {len(prompt)} characters; the most is {MAX_PROMPT_CHARS}.")
    negative = (params.negative or "").strip()
    if len(negative) > MAX_PROMPT_CHARS:
        raise PolicyError(
            f"Your negative prompt is {len(negative)} characters; the most is {MAX_PROMPT_CHARS}."
        )
    if "\x00" in prompt or "\x00" in negative:
        raise PolicyError("Your prompt contains a NUL character; please remove it.")
    for label, text in (("prompt", prompt), ("negative prompt", negative)):
        if (chunks := bounds.break_chunks(text)) > bounds.PROMPT_CHUNKS:
            raise PolicyError(
                f"Your {label} has {chunks - 1} `BREAK`s; the most is {bounds.PROMPT_CHUNKS - 1} "
                f"({bounds.PROMPT_CHUNKS} chunks of 75 tokens)."
            )

    # A guild's limit never lifts a value past the table: min() with the hard bound.
    max_steps = min(limits.max_steps, bounds.STEPS.hi)
    steps = defaults.steps if params.steps is None else params.steps
    if not bounds.STEPS.lo <= steps <= max_steps:
        raise PolicyError(
            f"Steps must be between {bounds.STEPS.lo} and {max_steps} here (you asked for {steps})."
        )
    cfg = defaults.cfg if params.cfg is None else params.cfg
    if cfg not in bounds.CFG:
        raise PolicyError(
            f"CFG scale must be between {bounds.CFG.lo:g} and {bounds.CFG.hi:g} (you asked for {cfg:g})."
        )
    max_count = min(limits.max_count, bounds.COUNT.hi)
    count = defaults.count if params.count is None else params.count
    if not bounds.COUNT.lo <= count <= max_count:
        raise PolicyError(
            f"Count must be between {bounds.COUNT.lo} and {max_count} here (you asked for {count})."
        )
    pair = find_sampler(params.sampler, params.scheduler, defaults.sampler)
    clip_skip = 0 if params.clip_skip is None else params.clip_skip
    if clip_skip not in bounds.CLIP_SKIP:
        raise PolicyError(
            f"Clip skip must be between {bounds.CLIP_SKIP.lo} and {bounds.CLIP_SKIP.hi} "
            f"(0: the model's default; you asked for {clip_skip})."
        )
    width, height = aspect_size(params.aspect or "1:1", defaults.size, defaults.buckets)
    max_pixels = min(limits.max_pixels, bounds.PIXELS.hi)
    if width * height > max_pixels or width not in bounds.SIDE or height not in bounds.SIDE:
        raise PolicyError(
            f"{width}×{height} is {width * height:,} pixels; the most here is {max_pixels:,} "
            f"and {bounds.SIDE.hi} per side. Try a less extreme aspect ratio."
        )
    if params.seed is None:
        seed = (rng or random.SystemRandom()).randrange(0, MAX_SEED + 1)
    elif params.seed in bounds.SEED:
        seed = params.seed
    else:
        raise PolicyError(f"Seed must be between 0 and {MAX_SEED} (you gave {params.seed}).")
    strength = 0.75 if params.strength is None else params.strength
    if strength not in bounds.STRENGTH:
        raise PolicyError(
            f"Strength must be between {bounds.STRENGTH.lo:g} and {bounds.STRENGTH.hi:g} "
            f"(you gave {strength:g})."
        )
    model = params.model.strip() if params.model else None
    if model is not None and (
        len(model) > bounds.MODEL_NAME_CHARS or not re.fullmatch(r"[\w .+\-()\[\]]+", model)
    ):
        raise PolicyError("That model name has characters I can't use; pick one from the list.")
    sampler, scheduler = pair.sampler, pair.scheduler
    resolved = Resolved(prompt, negative, seed, steps, cfg, sampler, width, height, count, model, strength)
    return replace(resolved, scheduler=scheduler, clip_skip=clip_skip)
