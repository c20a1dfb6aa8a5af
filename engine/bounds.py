"""The one table of hard bounds on what a job may ask for.

Slash options (``app_commands.Range``), inline ``--flags`` (bot/jobs/policy.py), admins' per-guild limits
(bot/jobs/limits.py), settings defaults and the engine's own request check (engine/requests.py) all read these
numbers, so a value one path refuses cannot slip in through another. A guild's limits may be stricter; these
are the most any of them may allow. It imports nothing heavy: the bot and the engine both use it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

N = TypeVar("N", int, float)


@dataclass(frozen=True, slots=True)
class Bound(Generic[N]):
    """An inclusive range ``lo <= value <= hi``."""

    lo: N
    hi: N

    def __contains__(self, value: object) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return isinstance(value, int | float) and self.lo <= value <= self.hi


STEPS = Bound(1, 150)
# Below 0.05 img2img would need ceil(1/strength) scheduler steps for one denoising step (diffusers runs
# int(steps * strength) of them): 1e-8 built a 10^8-step schedule before the first step callback.
STRENGTH = Bound(0.05, 1.0)
CFG = Bound(1.0, 30.0)
SIDE = Bound(64, 4096)  # width or height of an output image (a 4:1 picture at the most pixels)
PIXELS = Bound(64 * 64, 2048 * 2048)  # width × height of an output image, upscales included
COUNT = Bound(1, 16)  # images per job
SEED = Bound(0, 2**32 - 1)
# A1111's "Clip skip" (0: the model's default). SD 1.x's text encoder has 12 layers; SDXL's big one 32.
CLIP_SKIP = Bound(0, 12)
# A prompt's emphasis weight ``(word:w)``, nested ones multiplied (clamped: parsing never fails), and a LoRA
# tag's ``<lora:name:w>``, two tags of one name added (refused). They scale float32/float16 tensors: 1e308 is
# inf there, and the picture NaN (black) with no error. A1111 has no limit; nothing useful is past ±100.
WEIGHT = Bound(-100.0, 100.0)

PROMPT_CHARS = 1500  # a prompt, and separately its negative
MODEL_NAME_CHARS = 200
# 75-token chunks a prompt (or its negative) may encode to, BREAK included: each chunk lengthens the UNet's
# cross-attention context, so 250 BREAKs made a 19,000-token context (about 5x the UNet's cost).
PROMPT_CHUNKS = 8
# Distinct texts one prompt's editing ([a:b:n]) and alternation ([a|b]) may make over its steps: each is
# encoded on its own, and "[a|b][c|d|e][f|g|h|i|j]" alone makes 30.
PROMPT_SCHEDULE_TEXTS = 16

UPLOAD_BYTES = 10 * 1024 * 1024  # Discord's per-file limit without boosts: what a member can attach
PICTURE_SIDE = 8192  # an uploaded picture's width or height, read from its header before decoding
PICTURE_PIXELS = 25_000_000  # an uploaded picture's width × height (a 24-megapixel camera fits)

_BREAK = re.compile(r"\bBREAK\b")


def break_chunks(text: str) -> int:
    """The fewest chunks ``text`` encodes to: one, plus one per ``BREAK`` (A1111 starts a chunk at each).

    The bot has no tokenizer; this is the part of the chunk bound it can check with a clear answer. The
    engine counts real tokens (engine/prompts.py)."""
    return 1 + len(_BREAK.findall(text))


def img2img_schedule(steps: int, strength: float) -> int:
    """``num_inference_steps`` for a diffusers img2img call that denoises at least once.

    Diffusers builds a schedule of ``num_inference_steps`` and runs its last ``int(steps * strength)``.
    With ``steps * strength < 1`` the schedule is lengthened just enough to run one step. Never more than
    ``STEPS.hi``: a strength or step count out of bounds raises ValueError instead of building a huge
    schedule."""
    if steps not in STEPS:
        raise ValueError(f"steps must be between {STEPS.lo} and {STEPS.hi}, got {steps}")
    if strength not in STRENGTH:
        raise ValueError(f"strength must be between {STRENGTH.lo} and {STRENGTH.hi}, got {strength}")
    n = steps
    if int(n * strength) < 1:
        n = math.ceil(1 / strength)
        while int(n * strength) < 1:  # float rounding: ceil(1/s) * s can land a hair under 1
            n += 1
    if n > STEPS.hi:
        raise ValueError(f"strength {strength} needs {n} scheduler steps; the most is {STEPS.hi}")
    return n
