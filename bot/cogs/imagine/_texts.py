"""The words a job's messages are made of: the headline, the queued line, the parameter line under a
result. Pure functions over a job row, so every message says the same thing the same way."""

from __future__ import annotations

from bot.cogs.common import safe
from bot.db.models import Job
from engine.protocol import JobKind

PROMPT_SHOWN = 300  # characters of the prompt repeated in a headline


def headline(job: Job) -> str:
    """The first line of every message about a job: its prompt and its author."""
    return f"**{safe(job.prompt, PROMPT_SHOWN)}** — <@{job.user_id}>"


def about(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"about {seconds:.0f} s" if seconds >= 1.5 else "about a second"


def queued(job: Job, position: int, eta: float | None) -> str:
    wait = f", {about(eta)}" if eta is not None else ""
    return f"{headline(job)}\n⏳ Queued — position {position}{wait}"


def describe(job: Job) -> str:
    """The parameter line under a result: seed(s), sampler, steps, cfg, size, time."""
    seeds = f"seed {job.seed}" if job.count == 1 else f"seeds {job.seed}–{job.seed + job.count - 1}"
    sampler = job.sampler if job.scheduler in (None, "", "Automatic") else f"{job.sampler} {job.scheduler}"
    parts = [seeds, sampler, f"{job.steps} steps", f"CFG {job.cfg_scale:g}", f"{job.width}×{job.height}"]
    if job.clip_skip and job.clip_skip > 1:
        parts.append(f"clip skip {job.clip_skip}")
    if job.kind == JobKind.IMG2IMG:
        parts.insert(0, f"variation (strength {job.strength:g})")
    elif job.kind == JobKind.UPSCALE:
        parts.insert(0, "upscaled 2×")
    if job.engine_seconds is not None:
        parts.append(f"{job.engine_seconds:.1f} s")
    return " · ".join(parts)


def withheld_note(job: Job) -> str:
    flagged = sum(1 for i in job.images if i.nsfw)
    if not flagged:
        return ""
    return (
        f"\n🔞 {flagged} of {len(job.images)} pictures were held back by the safety checker "
        "(this channel is not marked NSFW)."
    )
