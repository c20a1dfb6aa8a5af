"""Pipeline execution: one loaded model, batches of compatible requests, progress, cancel, img2img/upscale,
out-of-memory splitting, PNG encoding off the GPU's critical path.

The :class:`Runner` is used by the worker process (:mod:`engine.worker`) and in-process by benchmarks and
the one-off CLI::

    runner = Runner("/models/tiny", device="cpu", max_batch=4)
    results = runner.run([GenerateRequest(job_id="a", prompt="a cat", steps=4, width=64, height=64)])
    results["a"]  # JobDone | JobFailed | JobCancelled

Rules:

- image ``i`` of a request uses its own CPU ``torch.Generator`` seeded ``seed + i``, so the same seed and
  parameters give the same image on the same device, alone or in a batch;
- requests that share model, kind, size, steps, sampler, cfg (and strength) run as one UNet batch of up
  to ``max_batch`` images; a request with more images than that runs in chunks;
- a batch that runs out of accelerator memory is split in halves and retried; a single image that still
  does not fit fails its request only.

Its parts: the model (engine/model_slot.py), request checks (engine/requests.py), job state
(engine/jobs.py, shared with the simulated runner), one batch's pipeline call (engine/pipeline_call.py),
step progress (engine/progress.py) and PNG encoding (engine/pngs.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine import devices, grids, loading
from engine import embeddings as embeddings_mod
from engine import loras as loras_mod
from engine.families import Family
from engine.jobs import Emit, Job, JobBook
from engine.model_slot import ModelSlot
from engine.pipeline_call import call_pipeline, default_clip_skip
from engine.pngs import PngEncoder, png_parameters
from engine.preview import Previewer
from engine.progress import Interrupted, StepProgress
from engine.protocol import (
    DEFAULT_SAMPLER,
    Event,
    GenerateRequest,
    JobCancelled,
    JobDone,
    JobFailed,
)
from engine.requests import RequestError, prepare_job
from engine.safety import SafetyChecker

__all__ = ["Job", "RequestError", "Runner"]

log = logging.getLogger(__name__)

OOM_TEST_ENV = "ENGINE_TEST_OOM_ABOVE"


class Runner:
    """One loaded model on one device; runs batches of requests. Not thread-safe for :meth:`run_batch` (one
    caller at a time); :meth:`cancel` may be called from any thread."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 4,
        models_dir: str | os.PathLike[str] | None = None,
        allow_pickle: bool = False,
        single_file_config: str | os.PathLike[str] | None = None,
        taesd: str | os.PathLike[str] | None = None,
        taesdxl: str | os.PathLike[str] | None = None,
        lora_dir: str | os.PathLike[str] | None = None,
        embeddings_dir: str | os.PathLike[str] | None = None,
        safety_checker: str | os.PathLike[str] | None = None,
        compile: bool = False,
        cpu_offload: bool = False,
        channels_last: bool | None = None,
        worker_id: str = "",
        png_workers: int = 2,
        oom_above: int | None = None,
        warmup: bool | None = None,
        cache_models: int = 2,
        cache_ram: int = 0,
        cache_gb: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.device = devices.resolve_device(device)
        self.dtype = devices.resolve_dtype(dtype, self.device)
        self.max_batch = max_batch
        models = Path(models_dir) if models_dir is not None else None
        self.loras = loras_mod.LoraLibrary(
            loras_mod.default_folder(Path(lora_dir) if lora_dir is not None else None, models),
            allow_pickle=allow_pickle,
        )
        self.embeddings = embeddings_mod.EmbeddingLibrary(
            embeddings_mod.default_folder(embeddings_dir, models), allow_pickle=allow_pickle
        )
        if self.device.type == "cuda":
            # cuDNN's autotuner picks each convolution's algorithm once per shape (a few shapes here: sizes x
            # batch sizes); measured 17 % faster at batch 2 (one image with guidance), neutral at 16-32.
            torch.backends.cudnn.benchmark = True
        self.worker_id = worker_id
        if oom_above is None and os.environ.get(OOM_TEST_ENV):
            oom_above = int(os.environ[OOM_TEST_ENV])
        self.oom_above = oom_above
        self.jobs = JobBook()
        self.pngs = PngEncoder(png_workers)
        self._abort = False
        self.slot = ModelSlot(
            model,
            device=self.device,
            dtype=self.dtype,
            models_dir=models,
            allow_pickle=allow_pickle,
            single_file_config=single_file_config,
            compile=compile,
            cpu_offload=cpu_offload,
            # Measured on an H200 (torch 2.11, fp16, bench/gpu_probe.py): channels_last made the SD 1.5 UNet
            # 7-10 % slower at batch 16-32 (GroupNorm and attention reshape it back), so it is opt-in.
            channels_last=bool(channels_last),
            cache_models=cache_models,
            cache_ram=cache_ram,
            cache_gb=cache_gb,
        )
        self.previewer = Previewer(Path(taesd), self.device, self.dtype) if taesd is not None else Previewer()
        # SDXL's latents differ from SD 1.x/2.x's: TAESDXL, or the linear approximation with SDXL's factors.
        self.previewer_xl = Previewer(taesdxl, self.device, self.dtype, family=Family.SDXL)
        self.safety: SafetyChecker | None = None
        if safety_checker is not None:
            self.safety = SafetyChecker(Path(safety_checker), self.device, self.dtype)
        self._warned_no_safety = False
        if warmup if warmup is not None else compile:
            self.warmup()

    @property
    def pipe(self) -> Any:
        """The current text-to-image pipeline (None while another model loads)."""
        return self.slot.pipe

    @property
    def model_name(self) -> str:
        return self.slot.name

    @property
    def device_name(self) -> str:
        return devices.describe(self.device)

    def warmup(self, steps: int = 2) -> None:
        """torch.compile's compiling, done at start instead of inside members' jobs. A first run at
        512x512, then one that changes batch size, height and width at once: torch recompiles once with all
        three dynamic, and that graph serves every later size and batch. Then the default sampler, whose
        integer timesteps need a graph of their own (Euler's are floats). Warming up one batch size at a
        time with one sampler (as this did before) left each member's first new height, width or sampler
        family to a recompile inside their job: 40-75 s each on this project's CPU with the tiny model,
        about 90 s on an H200 with SD 1.5 (BENCHMARKS.md)."""
        for sampler, n, width, height in (
            ("Euler", 1, 512, 512),
            ("Euler", self.max_batch, 448, 576),
            (DEFAULT_SAMPLER, 1, 512, 512),
        ):
            req = GenerateRequest(
                job_id="warmup",
                prompt="warmup",
                steps=steps,
                count=n,
                sampler=sampler,
                width=width,
                height=height,
            )
            self.run([req])

    # ------------------------------------------------------------------------------------------- jobs

    def prepare(self, request: GenerateRequest) -> Job:
        """Check ``request`` into a :class:`Job`. Raises :class:`RequestError` with a clear reason."""
        return prepare_job(
            request,
            book=self.jobs,
            resolve_model=self.slot.resolve,
            loras=self.loras,
            embeddings=self.embeddings,
            # Not the pipeline's own tokenizer, which the runner thread may be using (engine/model_slot.py).
            tokenizer=self.slot.counting_tokenizer,  # None while another model loads
        )

    def plan(self, jobs: Iterable[Job]) -> list[tuple[Job, list[int]]]:
        """The next batch (engine/batching.py's rule: the loaded model's jobs first, within a bound)."""
        source = self.slot.source
        return self.jobs.plan(jobs, self.max_batch, source.key if source is not None else None)

    def cancel(self, job: Job, emit: Emit) -> bool:
        """Cancel ``job``: at once when it is not running, else at the next denoising step. False when it
        had already finished."""
        return self.jobs.cancel(job, emit)

    def cancel_id(self, job_id: str) -> bool:
        """Cancel the unfinished job ``job_id`` of a :meth:`run` in progress (from any thread, e.g. an
        ``on_event`` callback). False when no such job is unfinished."""
        return self.jobs.cancel_id(job_id)

    def abort(self) -> None:
        """Stop the running batch at the next step (its jobs get no further events)."""
        self._abort = True

    def fail(self, job: Job, reason: str, emit: Emit, retryable: bool = False) -> bool:
        return self.jobs.fail(job, reason, emit, retryable)

    # ---------------------------------------------------------------------------------------- batches

    def run_batch(self, batch: Sequence[tuple[Job, list[int]]], emit: Emit) -> None:
        """Run one planned batch; emits JobStarted/JobProgress and, once its PNGs are encoded (in the pool),
        JobDone. Never raises for a request's fault: failures become JobFailed."""
        if not batch:
            return
        jobs = [job for job, _ in batch]
        try:
            try:
                self.slot.ensure(batch[0][0].source)
            except loading.ModelLoadError as exc:
                for job in jobs:
                    self.jobs.fail(job, str(exc), emit)
                return
            self.jobs.start(jobs, self.worker_id, emit)
            self._execute([(job, i) for job, indices in batch for i in indices], emit)
        finally:
            self.jobs.release(jobs, emit)

    def _execute(self, items: list[tuple[Job, int]], emit: Emit) -> None:
        items = [(job, i) for job, i in items if not job.finished]
        # Embeddings load before the batch runs; a job whose embedding does not fails alone.
        for job, reason in self.embeddings.apply(self.slot.pipe, [job for job, _ in items]).items():
            self.jobs.fail(job, reason, emit)
        items = [(job, i) for job, i in items if not job.finished]
        if not items:
            return
        progress_before = {job: job.image_steps for job, _ in items}
        try:
            images = self._call_pipeline(items, emit)
            flags = self._safety_check(items, images)
        except Interrupted:
            return
        except Exception as exc:
            for job, steps in progress_before.items():
                job.image_steps = steps
            if devices.is_oom(exc):
                devices.empty_cache(self.device)
                if len(items) > 1:
                    half = len(items) // 2
                    log.warning(
                        "out of memory on a batch of %d images; retrying as %d + %d",
                        len(items),
                        half,
                        len(items) - half,
                    )
                    self._execute(items[:half], emit)
                    self._execute(items[half:], emit)
                    return
                job = items[0][0]
                reason = (
                    f"out of GPU memory rendering one {job.key.width}x{job.key.height} image; "
                    "try a smaller size"
                )
                self.jobs.fail(job, reason, emit)
                return
            if isinstance(exc, loras_mod.LoraError):  # a file that went away or does not load: say which
                reason = str(exc)
            else:
                log.exception("pipeline call failed")
                reason = f"generation failed: {type(exc).__name__}: {exc}"
            for job in dict.fromkeys(job for job, _ in items):
                self.jobs.fail(job, reason, emit)
            return
        for (job, index), image, nsfw in zip(items, images, flags, strict=True):
            if job.finished or job.cancelled:
                continue
            self._submit_png(job, index, image, nsfw, emit)

    def _safety_check(self, items: list[tuple[Job, int]], images: list[Image.Image]) -> list[bool]:
        """Run the safety checker on the images whose request asked for it (blacking out flagged ones)."""
        flags = [False] * len(images)
        wanted = [pos for pos, (job, _) in enumerate(items) if job.request.safety_check]
        if not wanted:
            return flags
        if self.safety is None:
            if not self._warned_no_safety:
                log.warning("requests ask for the safety checker but none is configured (--safety-checker)")
                self._warned_no_safety = True
            return flags
        checked, found = self.safety.check([images[pos] for pos in wanted])
        for pos, image, flag in zip(wanted, checked, found, strict=True):
            images[pos], flags[pos] = image, flag
        return flags

    def _call_pipeline(self, items: list[tuple[Job, int]], emit: Emit) -> list[Image.Image]:
        n = len(items)
        if self.oom_above is not None and n > self.oom_above:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (test hook: {n} images > {OOM_TEST_ENV}={self.oom_above})"
            )
        previewer = self.previewer_xl if self.slot.family is Family.SDXL else self.previewer
        progress = StepProgress(self.jobs, items, emit, previewer.preview, lambda: self._abort)
        return call_pipeline(
            self.slot,
            items,
            progress,
            loras=self.loras,
            embeddings=self.embeddings,
            device=self.device,
            dtype=self.dtype,
        )

    # ------------------------------------------------------------------------------------------- PNGs

    def _submit_png(self, job: Job, index: int, image: Image.Image, nsfw: bool, emit: Emit) -> None:
        job.tiles[index] = image

        def done(png: bytes) -> None:
            self.jobs.add_png(job, index, png, nsfw, emit, self.worker_id, lambda i, w: self._grid(job, i, w))

        def failed(exc: Exception) -> None:
            self.jobs.fail(job, f"PNG encoding failed: {exc}", emit)

        self.pngs.submit(image, lambda: self.infotext(job, index), done, failed)

    def _grid(self, job: Job, indices: list[int], withheld: list[bool]) -> bytes | None:
        """The job's grid, in the PNG pool thread that encoded its last picture (the next batch runs on
        meanwhile). One that cannot be built is left to the bot, which builds it from the files."""
        try:
            first = next((i for i, hidden in zip(indices, withheld, strict=True) if not hidden), None)
            text = self.infotext(job, first) if first is not None else None
            seeds = [job.request.seeds[i] for i in indices]
            return grids.grid_png([job.tiles[i] for i in indices], withheld, text, seeds)
        except Exception:
            log.exception("the grid of job %s could not be built; the bot builds it", job.job_id)
            return None

    def infotext(self, job: Job, index: int) -> str:
        # As it ran (engine/pipeline_call.py).
        clip_skip = job.key.clip_skip or default_clip_skip(job, self.slot.family)
        return png_parameters(job, index, self.slot.hash_of(job.source), self.loras, clip_skip)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every PNG handed to the pool is encoded (and its JobDone emitted)."""
        self.pngs.wait_idle(timeout)

    # ------------------------------------------------------------------------------------ in-process

    def run(self, requests: Iterable[GenerateRequest], on_event: Emit | None = None) -> dict[str, Event]:
        """Run ``requests`` to completion in this thread (batched like the worker) and return the terminal
        event (JobDone, JobFailed or JobCancelled) of each job by id. ``on_event`` sees every event."""
        results: dict[str, Event] = {}
        lock = threading.Lock()

        def emit(event: Event) -> None:
            if isinstance(event, JobDone | JobFailed | JobCancelled):
                with lock:
                    results[event.job_id] = event
            if on_event is not None:
                on_event(event)

        jobs: list[Job] = []
        for request in requests:
            try:
                job = self.prepare(request)
            except RequestError as exc:
                emit(JobFailed(request.job_id, str(exc)))
                continue
            self.jobs.track(job, emit)
            jobs.append(job)
        while True:
            batch = self.plan(jobs)
            if not batch:
                break
            self.run_batch(batch, emit)
        self.wait_idle()
        return results

    def close(self) -> None:
        self.pngs.close()
