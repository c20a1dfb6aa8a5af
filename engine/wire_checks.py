"""What each message field may hold on the wire: its type, its size, its range.

:func:`engine.protocol.decode` runs :func:`check_fields` on every message before it exists, so a frame from a
broken peer, or from anyone who can publish on the NATS broker, never reaches the bot or the engine with a
field of the wrong type (an image ``index`` of ``"0/../../x"`` would name a file), an id that is not one
subject token, a 1e9-image job, or a blob of any size. The checks are about what the receiver can safely
hold; whether a request is *allowed* (steps, sizes, prompts) stays the engine's answer (engine/requests.py),
which gives a clear reason, so the text caps here are generous.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from enum import Enum
from functools import cache
from typing import Any

from engine import bounds

# The bot's job ids are uuid hex (bot/jobs/manager.py new_job_id); the engine's own runs use short tags
# ("warmup", "cli", bench names). Either way one id is one NATS subject token and one file-name part.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MIB = 1024 * 1024
IMAGE_BYTES = 32 * MIB  # a PNG of the largest allowed image (4 Mpx of noise: about 12 MiB), an init image
PREVIEW_BYTES = 4 * MIB
GRID_BYTES = 4 * IMAGE_BYTES  # four of the largest pictures side by side
REASON_CHARS = 2000  # a failure's reason (JobFailed cuts a longer one when it is made)

# Most characters of each text field, and whether it is a one-line name (no control characters).
_TEXT: dict[str, tuple[int, bool]] = {
    "prompt": (16 * bounds.PROMPT_CHARS, False),
    "negative_prompt": (16 * bounds.PROMPT_CHARS, False),
    "reason": (REASON_CHARS, False),
    "sampler": (100, True),
    "scheduler": (100, True),
    "model": (1000, True),  # a request's model name, or the path/hub id a worker serves
    "device": (100, True),
    "worker_id": (128, True),
}
_BYTES = {"png": IMAGE_BYTES, "init_image": IMAGE_BYTES, "preview": PREVIEW_BYTES, "grid": GRID_BYTES}
_RANGES: dict[str, tuple[int, int]] = {
    "index": (0, bounds.COUNT.hi - 1),  # names the image's file: never more than a job's images
    "count": (bounds.COUNT.lo, bounds.COUNT.hi),  # the unit of the workers' capacity
    "seed": (bounds.SEED.lo, bounds.SEED.hi),
    "step": (0, 1_000_000),
    "total": (0, 1_000_000),
    "pid": (0, 2**32),
    "max_batch": (1, 1024),
    "preview_every": (0, 1_000_000),
    "clip_skip": (bounds.CLIP_SKIP.lo, bounds.CLIP_SKIP.hi),
}
_ANY_INT = (-(2**53), 2**53)  # steps, sizes, priority, protocol: the engine judges them, but not a 10^300
_ANY_FLOAT = 1e12


def check_fields(cls: type, fields: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of ``cls`` that ``fields`` gets wrong; converts in place
    (a whole number for a float field, a string for an enum)."""
    hints = _hints(cls)
    unknown = set(fields) - set(hints)
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r:.40}")
    for name, value in fields.items():
        fields[name] = _check(name, value, hints[name])
    images = fields.get("images")
    if images is not None:
        if len(images) > bounds.COUNT.hi:
            raise ValueError(f"{len(images)} images; a job has {bounds.COUNT.hi} at most")
        if len({image.index for image in images}) != len(images):
            raise ValueError("two images with the same index")


@cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if name in names}


def _check(name: str, value: Any, hint: Any) -> Any:
    value = _typed(name, value, hint)
    if isinstance(value, str) and name in _TEXT:
        most, one_line = _TEXT[name]
        if len(value) > most:
            raise ValueError(f"{name} has {len(value)} characters; {most} at most")
        if one_line and _CONTROL.search(value):
            raise ValueError(f"{name} holds control characters")
    if name in ("job_id",) and not JOB_ID_RE.fullmatch(value):
        raise ValueError(f"job_id {value!r:.80} is not 1-64 of A-Z a-z 0-9 _ -")
    if isinstance(value, bytes) and len(value) > _BYTES.get(name, 0):
        raise ValueError(f"{name} of {len(value)} bytes is over the limit")
    if type(value) is int:
        lo, hi = _RANGES.get(name, _ANY_INT)
        if not lo <= value <= hi:
            raise ValueError(f"{name} {value:.0f} is outside {lo}..{hi}")
    if type(value) is float and not (math.isfinite(value) and abs(value) <= _ANY_FLOAT):
        raise ValueError(f"{name} {value} is not a usable number")
    return value


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it is a ``hint``; raises ValueError otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        arms = [arm for arm in typing.get_args(hint) if arm is not type(None)]
        for arm in arms:
            try:
                return _typed(name, value, arm)
            except ValueError:
                continue
        raise ValueError(f"{name} has the wrong type ({type(value).__name__})")
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list")
        return [_typed(name, v, item) for v in value]
    if isinstance(hint, type) and issubclass(hint, Enum):
        if isinstance(value, hint):
            return value
        if type(value) is str:
            try:
                return hint(value)
            except ValueError:
                pass
        raise ValueError(f"{name} {value!r:.40} is not one of {', '.join(str(m.value) for m in hint)}")
    if hint is float and type(value) in (int, float):
        return float(value)
    # bool is an int subclass: exact types, so True is no index and 1 is no flag.
    if hint in (str, int, bool, bytes) and type(value) is hint:
        return value
    if dataclasses.is_dataclass(hint) and type(value) is hint:
        return value
    raise ValueError(f"{name} has the wrong type ({type(value).__name__})")
