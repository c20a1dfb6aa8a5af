"""One job's state on a worker, and the one way it moves: shared by the real :class:`engine.runner.Runner`
and the load-simulation runner (engine/simulate.py), so both batch, cancel, fail and finish alike.

Torch-free (the simulated runner must start in well under a second).

A job gets exactly one terminal event (JobDone, JobFailed or JobCancelled): :meth:`JobBook.finish` is the
only place that emits one, under the book's lock, and it drops the job's PNGs at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from engine.batching import plan_batch
from engine.loading import ModelSource
from engine.loras import Loras
from engine.protocol import (
    Event,
    GenerateRequest,
    ImageResult,
    JobCancelled,
    JobDone,
    JobFailed,
    JobKind,
    JobStarted,
)

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]


class BatchKey(NamedTuple):
    """What images must share to run as one batch."""

    model: str  # ModelSource.key
    kind: JobKind
    width: int
    height: int
    steps: int
    sampler: str
    cfg_scale: float
    strength: float | None
    # Rows of a batch are padded to one prompt length, which shifts a short prompt's image slightly:
    # only prompts of the same number of 77-token chunks share a batch (engine/prompts.py).
    chunks: int = 1
    loras: Loras = ()  # a batch runs with one set of LoRA adapters
    scheduler: str = "Automatic"  # the schedule type that runs (engine.sampler_names.resolve)
    clip_skip: int = 0  # the text encoder's output layer differs (0: the model's default)


@dataclass(eq=False)
class Job:
    """A request as a runner tracks it (mutable state, guarded by its :class:`JobBook`'s lock)."""

    request: GenerateRequest
    key: BatchKey
    source: ModelSource
    prompt: str = ""  # the prompt as encoded: the request's, without its <lora:...> tags
    init_image: Image.Image | None = None  # decoded and resized to the key's size
    order: int = 0
    next_index: int = 0  # images handed to a batch so far
    started_at: float | None = None
    running: bool = False
    cancelled: bool = False
    finished: bool = False  # a terminal event (done/failed/cancelled) was emitted
    image_steps: int = 0  # progress: denoising steps done, summed over the request's images
    last_step: int = -1
    pngs: dict[int, tuple[bytes, bool]] = field(default_factory=dict)  # index -> (PNG, nsfw)
    tiles: dict[int, Image.Image] = field(default_factory=dict)  # index -> the picture, for the grid
    upscale: float | None = None  # the resize factor of an upscale job (PNG info)
    embeddings: tuple[str, ...] = ()  # textual-inversion embeddings its texts name (engine/embeddings.py)
    ti_hashes: str | None = None  # A1111's "TI hashes" PNG-info value for them
    # Its prompt and negative encode to different chunk counts, so the shorter is padded with empty chunks
    # (engine/conditioning.py): what A1111 does, and writes as "Pad conds: True", with that option on.
    pad_conds: bool = False
    passed_over: int = 0  # batches of the loaded model that went first (engine/batching.py)
    emit: Emit | None = None  # where JobBook.cancel_id reports a cancel (set by run() / the worker)

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def remaining(self) -> int:
        return self.request.count - self.next_index


class JobBook:
    """A runner's jobs: arrival order, the unfinished ones of in-process runs (for :meth:`cancel_id`), and
    every change of state. Thread-safe: a batch runs in one thread while cancels come from any other."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._order = 0
        self._active: dict[str, Job] = {}

    def next_order(self) -> int:
        with self.lock:
            self._order += 1
            return self._order

    def track(self, job: Job, emit: Emit) -> None:
        """Make ``job`` cancellable by id (:meth:`cancel_id`) until it finishes; events go to ``emit``."""
        with self.lock:
            job.emit = emit
            self._active[job.job_id] = job

    def plan(
        self, jobs: Iterable[Job], max_batch: int, loaded_model: str | None = None
    ) -> list[tuple[Job, list[int]]]:
        with self.lock:
            return plan_batch(jobs, max_batch, loaded_model)

    def start(self, jobs: Iterable[Job], worker_id: str, emit: Emit) -> None:
        """JobStarted for each job of a batch that had not started."""
        now = time.perf_counter()
        for job in jobs:
            if job.started_at is None and not job.finished:
                job.started_at = now
                safe_emit(emit, JobStarted(job.job_id, worker_id))

    def settle(self, job: Job, emit: Emit) -> bool:
        """At a step boundary: end ``job`` if it was cancelled. True when it is out of the batch."""
        with self.lock:
            if job.cancelled and not job.finished:
                self.finish(job, JobCancelled(job.job_id), emit)
            return job.finished

    def release(self, jobs: Iterable[Job], emit: Emit) -> None:
        """After a batch, whatever happened in it: its jobs are no longer running; cancelled ones end."""
        with self.lock:
            for job in jobs:
                job.running = False
                if job.cancelled and not job.finished:
                    self.finish(job, JobCancelled(job.job_id), emit)

    def cancel(self, job: Job, emit: Emit) -> bool:
        """Cancel ``job``: at once when it is not running, else at the next step. False when it had
        already finished."""
        with self.lock:
            if job.finished:
                return False
            job.cancelled = True
            if not job.running:
                self.finish(job, JobCancelled(job.job_id), emit)
            return True

    def cancel_id(self, job_id: str) -> bool:
        """Cancel the unfinished tracked job ``job_id`` (from any thread). False when there is none."""
        with self.lock:
            job = self._active.get(job_id)
            if job is None or job.emit is None:
                return False
            return self.cancel(job, job.emit)

    def finish(self, job: Job, event: Event, emit: Emit) -> bool:
        """Emit ``job``'s terminal ``event``; False (and nothing emitted) when it already had one."""
        with self.lock:
            if job.finished:
                return False
            job.finished = True
            job.pngs.clear()
            job.tiles.clear()
            if self._active.get(job.job_id) is job:
                del self._active[job.job_id]
            safe_emit(emit, event)
        return True

    def fail(self, job: Job, reason: str, emit: Emit, retryable: bool = False) -> bool:
        return self.finish(job, JobFailed(job.job_id, reason, retryable), emit)

    def add_png(
        self,
        job: Job,
        index: int,
        png: bytes,
        nsfw: bool,
        emit: Emit,
        worker_id: str,
        grid: Callable[[list[int], list[bool]], bytes | None] | None = None,
    ) -> None:
        """Keep image ``index``'s PNG; with the job's last one, JobDone with all of them in index order and
        the picture ``grid(indices, withheld)`` makes of them, built outside the lock (a grid takes tens of
        ms to encode, and other jobs' PNGs and cancels must not wait for it)."""
        with self.lock:
            if job.finished:
                return
            job.pngs[index] = (png, nsfw)
            if len(job.pngs) < job.request.count:
                return
            indices = sorted(job.pngs)
            withheld = [job.pngs[i][1] for i in indices]
        picture = grid(indices, withheld) if grid is not None else None
        with self.lock:
            if job.finished:  # cancelled while the grid was made
                return
            seeds = job.request.seeds
            images = [ImageResult(i, seeds[i], *job.pngs[i]) for i in indices]
            elapsed = time.perf_counter() - (job.started_at or time.perf_counter())
            done = JobDone(job.job_id, images, round(elapsed, 4), job.source.name, worker_id, picture)
            self.finish(job, done, emit)


def safe_emit(emit: Emit, event: Event) -> None:
    """Hand ``event`` on; a failing receiver is logged, never allowed to break a batch of other jobs."""
    try:
        emit(event)
    except Exception:
        log.exception("could not deliver %s", type(event).__name__)
