"""LOAD SIMULATION ONLY: a stand-in for :class:`engine.runner.Runner` that sleeps a fixed time per denoising
step instead of running diffusion, for benchmarks and tests of the scale-out path
(``python -m engine serve --simulate-seconds-per-step 0.05``). Never use it to serve users.

It speaks the Runner's interface (prepare, plan, run_batch, cancel, fail, abort, wait_idle, close) and the
same events (JobStarted, JobProgress each step, JobDone). It checks requests, batches compatible jobs and
moves job state with the Runner's own code (engine/requests.py, engine/jobs.py), honours cancel at the next
step, and answers with small valid PNGs (one flat colour per seed, with a ``parameters`` text chunk), so
everything downstream (saving, posting) runs for real. It imports no torch and loads no model, so a worker
starts in well under a second: throughput then measures the plumbing, not the GPU.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable, Sequence

from engine.jobs import Emit, Job, JobBook, safe_emit
from engine.loading import ModelSource
from engine.loras import LoraLibrary
from engine.protocol import GenerateRequest, JobProgress
from engine.requests import RequestError, prepare_job

__all__ = ["MODEL_NAME", "RequestError", "SimulatedRunner", "simulated_png"]

MODEL_NAME = "simulated"


def _simulated_model(name: str | None) -> ModelSource:
    # No model is loaded: any name is taken, and only keeps jobs for different models out of one batch.
    return ModelSource("hub", (name or "").strip() or MODEL_NAME, MODEL_NAME)


class SimulatedRunner:
    """Sleeps ``seconds_per_step`` per step of each batch (a batch of up to ``max_batch`` images shares its
    steps, as on a GPU). Thread-safety as the Runner: one :meth:`run_batch` caller, cancel from anywhere.

    Requests are checked as the Runner checks them (engine/requests.py), as on a worker without a LoRA
    folder and before its tokenizer is loaded (prompt chunks are counted by their BREAKs)."""

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
        self.jobs = JobBook()
        self._loras = LoraLibrary(None)
        self._aborted = threading.Event()

    def prepare(self, request: GenerateRequest) -> Job:
        return prepare_job(
            request, book=self.jobs, resolve_model=_simulated_model, loras=self._loras, tokenizer=None
        )

    def plan(self, jobs: Iterable[Job]) -> list[tuple[Job, list[int]]]:
        """The next batch (engine/batching.py's rule)."""
        return self.jobs.plan(jobs, self.max_batch)

    def run_batch(self, batch: Sequence[tuple[Job, list[int]]], emit: Emit) -> None:
        if not batch:
            return
        jobs = [job for job, _ in batch]
        try:
            self.jobs.start(jobs, self.worker_id, emit)
            steps = batch[0][0].key.steps
            for step in range(1, steps + 1):
                live = [job for job in jobs if not self.jobs.settle(job, emit)]
                if not live:
                    return
                if self._aborted.wait(self.seconds_per_step):
                    return  # abort: the caller releases these jobs; no further events
                for job in live:
                    safe_emit(emit, JobProgress(job.job_id, step, steps))
            for job, indices in batch:
                size = (job.key.width, job.key.height)
                for index in indices:
                    png = simulated_png(job.request, job.request.seeds[index], size)
                    self.jobs.add_png(job, index, png, False, emit, self.worker_id)
        finally:
            self.jobs.release(jobs, emit)

    def cancel(self, job: Job, emit: Emit) -> bool:
        return self.jobs.cancel(job, emit)

    def fail(self, job: Job, reason: str, emit: Emit, retryable: bool = False) -> bool:
        return self.jobs.fail(job, reason, emit, retryable)

    def abort(self) -> None:
        self._aborted.set()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Nothing runs in the background here (PNGs are made inline)."""

    def close(self) -> None:
        pass


def simulated_png(request: GenerateRequest, seed: int, size: tuple[int, int] | None = None) -> bytes:
    """A flat-colour PNG of ``size`` (default: the request's), with A1111-style ``parameters`` (marked
    simulated)."""
    width, height = size or (request.width, request.height)
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
