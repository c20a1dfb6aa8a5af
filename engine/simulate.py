"""LOAD SIMULATION ONLY: a stand-in for :class:`engine.runner.Runner` that sleeps a fixed time per denoising
step instead of running diffusion, for benchmarks and tests of the scale-out path
(``python -m engine serve --simulate-seconds-per-step 0.05``). Never use it to serve users.

It speaks the Runner's interface (prepare, plan, run_batch, cancel, fail, abort, wait_idle, close) and the
same events (JobStarted, JobProgress each step, JobDone), batches compatible jobs like the Runner, honours
cancel at the next step, and answers with small valid PNGs (one flat colour per seed, with a ``parameters``
text chunk), so everything downstream (saving, posting) runs for real. It imports no torch and loads no
model, so a worker starts in well under a second: throughput then measures the plumbing, not the GPU.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from engine.batching import plan_batch
from engine.protocol import (
    Event,
    GenerateRequest,
    ImageResult,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    JobStarted,
)

Emit = Callable[[Event], None]

MAX_STEPS = 500
MAX_SIDE = 4096
MODEL_NAME = "simulated"


class SimulatedRequestError(ValueError):
    """A request the simulated runner refuses (the same bounds as the real runner's)."""


@dataclass(eq=False)
class SimJob:
    request: GenerateRequest
    order: int
    next_index: int = 0
    started_at: float | None = None
    running: bool = False
    cancelled: bool = False
    finished: bool = False
    pngs: dict[int, bytes] = field(default_factory=dict)
    emit: Emit | None = None

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def remaining(self) -> int:
        return self.request.count - self.next_index

    @property
    def key(self) -> tuple[object, ...]:
        r = self.request
        return (r.kind, r.width, r.height, r.steps, r.sampler, r.cfg_scale, r.model)


class SimulatedRunner:
    """Sleeps ``seconds_per_step`` per step of each batch (a batch of up to ``max_batch`` images shares its
    steps, as on a GPU). Thread-safety as the Runner: one :meth:`run_batch` caller, cancel from anywhere."""

    def __init__(self, seconds_per_step: float, *, max_batch: int = 4, worker_id: str = "") -> None:
        if seconds_per_step < 0:
            raise ValueError("seconds_per_step must be >= 0")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.seconds_per_step = seconds_per_step
        self.max_batch = max_batch
        self.worker_id = worker_id
        self.model_name = MODEL_NAME
        self.device_name = f"simulated ({seconds_per_step:g} s/step)"
        self._lock = threading.RLock()
        self._aborted = threading.Event()
        self._order = 0

    def prepare(self, request: GenerateRequest) -> SimJob:
        if not 1 <= request.steps <= MAX_STEPS:
            raise SimulatedRequestError(f"steps must be between 1 and {MAX_STEPS}, got {request.steps}")
        if request.count < 1:
            raise SimulatedRequestError(f"count must be at least 1, got {request.count}")
        if not (1 <= request.width <= MAX_SIDE and 1 <= request.height <= MAX_SIDE):
            raise SimulatedRequestError(f"size {request.width}x{request.height} is out of range")
        with self._lock:
            self._order += 1
            return SimJob(request, self._order)

    def plan(self, jobs: Iterable[SimJob]) -> list[tuple[SimJob, list[int]]]:
        """The next batch (engine/batching.py's rule)."""
        with self._lock:
            return plan_batch(jobs, self.max_batch)

    def run_batch(self, batch: Sequence[tuple[SimJob, list[int]]], emit: Emit) -> None:
        if not batch:
            return
        jobs = [job for job, _ in batch]
        try:
            now = time.perf_counter()
            for job in jobs:
                if job.started_at is None and not job.finished:
                    job.started_at = now
                    emit(JobStarted(job.job_id, self.worker_id))
            steps = batch[0][0].request.steps
            for step in range(1, steps + 1):
                live = [job for job in jobs if not self._settle_cancel(job, emit)]
                if not live:
                    return
                if self._aborted.wait(self.seconds_per_step):
                    return  # abort: the caller releases these jobs; no further events
                for job in live:
                    emit(JobProgress(job.job_id, step, steps))
            for job, indices in batch:
                self._images_done(job, indices, emit)
        finally:
            with self._lock:
                for job in jobs:
                    job.running = False
                    if job.cancelled and not job.finished:
                        self._finish(job, JobCancelled(job.job_id), emit)

    def _settle_cancel(self, job: SimJob, emit: Emit) -> bool:
        """True when ``job`` is out of this batch (cancelled now or finished before)."""
        with self._lock:
            if job.cancelled and not job.finished:
                self._finish(job, JobCancelled(job.job_id), emit)
            return job.finished

    def _images_done(self, job: SimJob, indices: list[int], emit: Emit) -> None:
        seeds = job.request.seeds
        for index in indices:
            job.pngs[index] = simulated_png(job.request, seeds[index])
        with self._lock:
            if job.finished or len(job.pngs) < job.request.count:
                return
            images = [ImageResult(i, seeds[i], job.pngs[i]) for i in sorted(job.pngs)]
            elapsed = time.perf_counter() - (job.started_at or time.perf_counter())
            self._finish(
                job, JobDone(job.job_id, images, round(elapsed, 4), MODEL_NAME, self.worker_id), emit
            )

    def cancel(self, job: SimJob, emit: Emit) -> bool:
        with self._lock:
            if job.finished:
                return False
            job.cancelled = True
            if not job.running:
                self._finish(job, JobCancelled(job.job_id), emit)
            return True

    def fail(self, job: SimJob, reason: str, emit: Emit, retryable: bool = False) -> bool:
        return self._finish(job, JobFailed(job.job_id, reason, retryable), emit)

    def _finish(self, job: SimJob, event: Event, emit: Emit) -> bool:
        with self._lock:
            if job.finished:
                return False
            job.finished = True
            job.pngs.clear()
            emit(event)
            return True

    def abort(self) -> None:
        self._aborted.set()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Nothing runs in the background here (PNGs are made inline)."""

    def close(self) -> None:
        pass


def simulated_png(request: GenerateRequest, seed: int) -> bytes:
    """A flat-colour PNG of the request's size, with A1111-style ``parameters`` (marked simulated)."""
    width, height = request.width, request.height
    rgb = bytes(((seed >> shift) & 0xFF) for shift in (16, 8, 0))
    raw = (b"\x00" + rgb * width) * height  # filter byte 0, then the row's pixels
    text = (
        f"{request.prompt}\nSteps: {request.steps}, Seed: {seed}, Size: {width}x{height}, Model: {MODEL_NAME}"
    )
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _chunk(b"tEXt", b"parameters\x00" + text.encode("latin-1", "replace")),
            _chunk(b"IDAT", zlib.compress(raw, 6)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
