"""Progress of one pipeline call: the step callback that reports each job's step (with its previews) and
stops the call at a step boundary once nothing in it is wanted. Torch-free (latents are passed through)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.jobs import Emit, Job, JobBook, safe_emit
from engine.protocol import JobProgress

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised from the step callback to stop a pipeline call whose jobs were all cancelled (or aborted)."""


class StepProgress:
    """``callback_on_step_end`` for a batch of ``items`` (job, image index) as the pipeline runs them.

    A job's step is its denoising steps summed over its images, divided by its image count: a job whose
    images run in several batches reports one rising count. Cancelled jobs end here, at a step."""

    def __init__(
        self,
        book: JobBook,
        items: list[tuple[Job, int]],
        emit: Emit,
        preview: Callable[[Any], bytes | None],
        aborted: Callable[[], bool],
    ) -> None:
        self._book, self._emit, self._preview, self._aborted = book, emit, preview, aborted
        self._first_pos: dict[Job, int] = {}  # the job's first row in the batch: its preview
        self._per_job: dict[Job, int] = {}
        for pos, (job, _) in enumerate(items):
            self._first_pos.setdefault(job, pos)
            self._per_job[job] = self._per_job.get(job, 0) + 1

    def __call__(self, pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if self._aborted():
            raise Interrupted
        total = max(1, int(pipe.num_timesteps))
        latents = kw["latents"]
        live = 0
        for job, images in self._per_job.items():
            if self._book.settle(job, self._emit):
                continue
            live += 1
            job.image_steps += images
            step = min(total, job.image_steps // job.request.count)
            if step <= job.last_step:
                continue
            job.last_step = step
            preview = None
            every = job.request.preview_every
            if every > 0 and step % every == 0 and step < total:
                try:
                    preview = self._preview(latents[self._first_pos[job]])
                except Exception:
                    log.exception("preview failed")
            safe_emit(self._emit, JobProgress(job.job_id, step, total, preview))
        if live == 0:
            raise Interrupted
        return {}
