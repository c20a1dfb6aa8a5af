"""A job row as the request an engine worker runs: the one place that maps the row's fields onto
:class:`engine.protocol.GenerateRequest` (and reads an img2img job's saved input picture)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.db.models import Job
from engine import protocol


async def request_of(job: Job, preview_every: int) -> protocol.GenerateRequest:
    """:func:`request_for`, reading a job's input picture in a thread; a job without one (most) is plain
    computation, done in place: a thread hop would cost more than the whole call."""
    if job.init_image_path:
        return await asyncio.to_thread(request_for, job, preview_every)
    return request_for(job, preview_every)


def request_for(job: Job, preview_every: int) -> protocol.GenerateRequest:
    """Blocking when the job has an input picture (it is read here)."""
    init = Path(job.init_image_path).read_bytes() if job.init_image_path else None
    return protocol.GenerateRequest(
        job_id=job.id,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        cfg_scale=job.cfg_scale,
        width=job.width,
        height=job.height,
        count=job.count,
        sampler=job.sampler,
        scheduler=job.scheduler or "Automatic",
        clip_skip=job.clip_skip or 0,
        model=job.model,
        kind=job.kind,
        strength=job.strength if job.strength is not None else 0.75,
        init_image=init,
        priority=job.priority,
        preview_every=preview_every,
        safety_check=bool(job.safety_check),
    )
