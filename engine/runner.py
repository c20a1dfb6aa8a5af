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
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image, PngImagePlugin

from engine import bounds, devices, loading, pictures, pnginfo, prompts
from engine import loras as loras_mod
from engine.batching import plan_batch
from engine.preview import Previewer
from engine.protocol import (
    DEFAULT_SAMPLER,
    Event,
    GenerateRequest,
    ImageResult,
    JobCancelled,
    JobDone,
    JobFailed,
    JobKind,
    JobProgress,
    JobStarted,
)
from engine.safety import SafetyChecker
from engine.samplers import UnknownSamplerError, canonical_sampler, make_scheduler

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]

MAX_STEPS = bounds.STEPS.hi
MAX_SIDE = bounds.SIDE.hi
MIN_SIDE = bounds.SIDE.lo
UPSCALE_FACTOR = 2
TILING_ABOVE_PIXELS = 1024 * 1024  # VAE tiling for larger images (an upscaled 1024x1024 is still untiled)
OOM_TEST_ENV = "ENGINE_TEST_OOM_ABOVE"


class RequestError(ValueError):
    """A request the engine cannot run as given (bad sampler, size, init image...): fails that request."""


class _Interrupted(Exception):
    """Raised from the step callback to stop a pipeline call whose jobs were all cancelled."""


class BatchKey(NamedTuple):
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
    loras: loras_mod.Loras = ()  # a batch runs with one set of LoRA adapters


@dataclass(eq=False)
class Job:
    """A request as the runner tracks it (mutable state, guarded by the runner's lock)."""

    request: GenerateRequest
    key: BatchKey
    source: loading.ModelSource
    prompt: str = ""  # the prompt as encoded: the request's, without its <lora:...> tags
    init_image: Image.Image | None = None
    order: int = 0
    next_index: int = 0  # images handed to a batch so far
    started_at: float | None = None
    running: bool = False
    cancelled: bool = False
    finished: bool = False  # a terminal event (done/failed/cancelled) was emitted
    image_steps: int = 0  # progress: denoising steps done, summed over the request's images
    last_step: int = -1
    pngs: dict[int, tuple[bytes, bool]] = field(default_factory=dict)  # index -> (PNG, nsfw)
    upscale: float | None = None  # the resize factor of an upscale job (PNG info)
    emit: Emit | None = None  # where :meth:`Runner.cancel_id` reports a cancel (set by run() / the worker)

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def remaining(self) -> int:
        return self.request.count - self.next_index


def _round8(value: float) -> int:
    return max(MIN_SIDE, round(value / 8) * 8)


def _decode_image(data: bytes) -> Image.Image:
    # The bot sends a normalized PNG, but the wire is untrusted: the same format, size and mode rules again.
    try:
        return pictures.open_rgb(data)
    except pictures.PictureError as exc:
        raise RequestError(f"init image could not be decoded: {exc}") from exc


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
        lora_dir: str | os.PathLike[str] | None = None,
        safety_checker: str | os.PathLike[str] | None = None,
        compile: bool = False,
        cpu_offload: bool = False,
        channels_last: bool | None = None,
        worker_id: str = "",
        png_workers: int = 2,
        oom_above: int | None = None,
        warmup: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.device = devices.resolve_device(device)
        self.dtype = devices.resolve_dtype(dtype, self.device)
        self.max_batch = max_batch
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.allow_pickle = allow_pickle
        self.loras = loras_mod.LoraLibrary(
            loras_mod.default_folder(lora_dir, self.models_dir), allow_pickle=allow_pickle
        )
        self.single_file_config = single_file_config
        self.compile = compile
        self.cpu_offload = cpu_offload and self.device.type == "cuda"
        # Measured on an H200 (torch 2.11, fp16, bench/gpu_probe.py): channels_last made the SD 1.5 UNet
        # 7-10 % slower at batch 16-32 (GroupNorm and attention reshape it back), so it is opt-in.
        self.channels_last = bool(channels_last)
        if self.device.type == "cuda":
            # cuDNN's autotuner picks each convolution's algorithm once per shape (a few shapes here: sizes x
            # batch sizes); measured 17 % faster at batch 2 (one image with guidance), neutral at 16-32.
            torch.backends.cudnn.benchmark = True
        self.worker_id = worker_id
        if oom_above is None and os.environ.get(OOM_TEST_ENV):
            oom_above = int(os.environ[OOM_TEST_ENV])
        self.oom_above = oom_above
        self._lock = threading.RLock()
        self._png_pool = ThreadPoolExecutor(max_workers=max(1, png_workers), thread_name_prefix="png")
        self._futures: set[Future[None]] = set()
        self._order = 0
        self._abort = False
        self._active: dict[str, Job] = {}  # unfinished jobs of run() calls, for cancel_id

        self.default_source = loading.resolve_model(os.fspath(model), self.models_dir)
        self.source: loading.ModelSource | None = None
        self.model_hash: str | None = None
        self.pipe: Any = None
        self.img2img: Any = None
        self._load(self.default_source)
        self.previewer = Previewer(taesd, self.device, self.dtype) if taesd is not None else Previewer()
        self.safety: SafetyChecker | None = None
        if safety_checker is not None:
            self.safety = SafetyChecker(safety_checker, self.device, self.dtype)
        self._warned_no_safety = False
        if warmup if warmup is not None else compile:
            self.warmup()

    # ------------------------------------------------------------------------------------------ models

    @property
    def model_name(self) -> str:
        return self.source.name if self.source is not None else ""

    @property
    def device_name(self) -> str:
        return devices.describe(self.device)

    def _load(self, source: loading.ModelSource) -> None:
        """Load ``source`` and make it current; on failure the current model stays (ModelLoadError)."""
        t0 = time.perf_counter()
        pipe = loading.load_pipeline(
            source,
            dtype=self.dtype,
            allow_pickle=self.allow_pickle,
            single_file_config=self.single_file_config,
        )
        digest = loading.model_hash(source.location) if source.kind == "file" else None
        old = self.pipe
        if old is not None:  # make room on the accelerator first
            self.pipe = self.img2img = None
            old.to("cpu")
            devices.empty_cache(self.device)
        try:
            self._place(pipe)
        except Exception as exc:
            del pipe
            devices.empty_cache(self.device)
            if old is not None:  # put the model we had back
                self._place(old)
                self._install(old)
            raise loading.ModelLoadError(
                f"could not move model {source.name} to {self.device}: {exc}"
            ) from exc
        del old
        self._install(pipe)
        self.source, self.model_hash = source, digest
        log.info(
            "loaded %s on %s (%s) in %.1fs", source.name, self.device, self.dtype, time.perf_counter() - t0
        )

    def _install(self, pipe: Any) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        self.pipe = pipe
        self.img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        self.img2img.set_progress_bar_config(disable=True)
        self._base_scheduler_config = dict(pipe.scheduler.config)

    def _place(self, pipe: Any) -> None:
        pipe.set_progress_bar_config(disable=True)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if self.compile and not hasattr(pipe.unet, "_orig_mod"):
            pipe.unet = torch.compile(pipe.unet)

    def ensure_model(self, source: loading.ModelSource) -> None:
        if self.source is None or source.key != self.source.key:
            self._load(source)

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

    # ---------------------------------------------------------------------------------------- requests

    def prepare(self, request: GenerateRequest) -> Job:
        """Validate ``request`` into a :class:`Job`. Raises :class:`RequestError` with a clear reason."""
        try:
            sampler = canonical_sampler(request.sampler)
        except UnknownSamplerError as exc:
            raise RequestError(str(exc)) from exc
        # engine/bounds.py's table again, whatever the bot checked: the request may come from anywhere.
        if request.steps not in bounds.STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {request.steps}")
        if request.count not in bounds.COUNT:
            raise RequestError(f"count must be between 1 and {bounds.COUNT.hi}, got {request.count}")
        if request.cfg_scale not in bounds.CFG:
            raise RequestError(
                f"cfg_scale must be between {bounds.CFG.lo:g} and {bounds.CFG.hi:g}, got {request.cfg_scale}"
            )
        if request.model is None or not request.model.strip():
            source = self.default_source
        elif request.model.strip() in (self.default_source.name, self.default_source.location):
            source = self.default_source
        elif self.source is not None and request.model.strip() in (self.source.name, self.source.location):
            source = self.source
        else:
            try:
                source = loading.resolve_model_name(request.model, self.models_dir)
            except loading.ModelLoadError as exc:
                raise RequestError(str(exc)) from exc
        init: Image.Image | None = None
        strength: float | None = None
        upscale: float | None = None
        width, height = request.width, request.height
        if request.kind != JobKind.TXT2IMG:
            if not request.init_image:
                raise RequestError(f"a {request.kind.value} request needs an init image")
            if request.strength not in bounds.STRENGTH:
                raise RequestError(
                    f"strength must be between {bounds.STRENGTH.lo:g} and {bounds.STRENGTH.hi:g}, "
                    f"got {request.strength}"
                )
            strength = float(request.strength)
            init = _decode_image(request.init_image)
            if request.kind == JobKind.UPSCALE and width <= init.width and height <= init.height:
                # No larger target given: 2x the init image (the bot sends the 2x size itself).
                width, height = init.width * UPSCALE_FACTOR, init.height * UPSCALE_FACTOR
            if request.kind == JobKind.UPSCALE:
                upscale = round(_round8(width) / init.width, 2)
        width, height = _round8(width), _round8(height)
        if width > MAX_SIDE or height > MAX_SIDE or width * height > bounds.PIXELS.hi:
            raise RequestError(
                f"size {width}x{height} is over the engine's limit of {MAX_SIDE} per side "
                f"and {bounds.PIXELS.hi:,} pixels"
            )
        if init is not None and init.size != (width, height):
            init = init.resize((width, height), Image.Resampling.LANCZOS)
        try:
            text, loras = loras_mod.extract(request.prompt)
            self.loras.check(loras)
        except loras_mod.LoraError as exc:
            raise RequestError(str(exc)) from exc
        key = BatchKey(
            source.key,
            request.kind,
            width,
            height,
            request.steps,
            sampler,
            float(request.cfg_scale),
            strength,
            self._chunks(text, request.negative_prompt),  # raises RequestError past bounds.PROMPT_CHUNKS
            loras,
        )
        with self._lock:
            self._order += 1
            return Job(
                request=request,
                key=key,
                source=source,
                prompt=text,
                init_image=init,
                order=self._order,
                upscale=upscale,
            )

    def _chunks(self, prompt: str, negative_prompt: str) -> int:
        tokenizer = getattr(self.pipe, "tokenizer", None)  # None while another model loads
        try:
            return prompts.chunk_count(tokenizer, prompt, negative_prompt) if tokenizer else 1
        except prompts.PromptTooLongError as exc:
            raise RequestError(str(exc)) from exc

    def plan(self, jobs: Iterable[Job]) -> list[tuple[Job, list[int]]]:
        """The next batch (engine/batching.py's rule)."""
        with self._lock:
            return plan_batch(jobs, self.max_batch)

    def cancel(self, job: Job, emit: Emit) -> bool:
        """Cancel ``job``: at once when it is not running, else at the next denoising step. False when it
        had already finished."""
        with self._lock:
            if job.finished:
                return False
            job.cancelled = True
            if not job.running:
                self._finish(job, JobCancelled(job.job_id), emit)
            return True

    def cancel_id(self, job_id: str) -> bool:
        """Cancel the unfinished job ``job_id`` of a :meth:`run` in progress (from any thread, e.g. an
        ``on_event`` callback). False when no such job is unfinished."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None or job.emit is None:
                return False
            return self.cancel(job, job.emit)

    def abort(self) -> None:
        """Stop the running batch at the next step (its jobs get no further events)."""
        self._abort = True

    def _finish(self, job: Job, event: Event, emit: Emit) -> bool:
        with self._lock:
            if job.finished:
                return False
            job.finished = True
            job.pngs.clear()
            if self._active.get(job.job_id) is job:
                del self._active[job.job_id]
            _safe_emit(emit, event)
        return True

    def fail(self, job: Job, reason: str, emit: Emit, retryable: bool = False) -> bool:
        return self._finish(job, JobFailed(job.job_id, reason, retryable), emit)

    # ---------------------------------------------------------------------------------------- batches

    def run_batch(self, batch: Sequence[tuple[Job, list[int]]], emit: Emit) -> None:
        """Run one planned batch; emits JobStarted/JobProgress and, once its PNGs are encoded (in the pool),
        JobDone. Never raises for a request's fault: failures become JobFailed."""
        if not batch:
            return
        try:
            try:
                self.ensure_model(batch[0][0].source)
            except loading.ModelLoadError as exc:
                for job, _ in batch:
                    self.fail(job, str(exc), emit)
                return
            now = time.perf_counter()
            for job, _ in batch:
                if job.started_at is None and not job.finished:
                    job.started_at = now
                    _safe_emit(emit, JobStarted(job.job_id, self.worker_id))
            items = [(job, i) for job, indices in batch for i in indices]
            self._execute(items, emit)
        finally:
            with self._lock:
                for job, _ in batch:
                    job.running = False
                    if job.cancelled and not job.finished:
                        self._finish(job, JobCancelled(job.job_id), emit)

    def _execute(self, items: list[tuple[Job, int]], emit: Emit) -> None:
        items = [(job, i) for job, i in items if not job.finished]
        if not items:
            return
        progress_before = {job: job.image_steps for job, _ in items}
        try:
            images = self._call_pipeline(items, emit)
            flags = self._safety_check(items, images)
        except _Interrupted:
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
                self.fail(job, reason, emit)
                return
            if isinstance(exc, loras_mod.LoraError):  # a file that went away or does not load: say which
                reason = str(exc)
            else:
                log.exception("pipeline call failed")
                reason = f"generation failed: {type(exc).__name__}: {exc}"
            for job in dict.fromkeys(job for job, _ in items):
                self.fail(job, reason, emit)
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
        key = items[0][0].key
        n = len(items)
        if self.oom_above is not None and n > self.oom_above:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (test hook: {n} images > {OOM_TEST_ENV}={self.oom_above})"
            )
        jobs = list(dict.fromkeys(job for job, _ in items))
        first_pos = {}
        per_job = dict.fromkeys(jobs, 0)
        for pos, (job, _) in enumerate(items):
            first_pos.setdefault(job, pos)
            per_job[job] += 1
        generators = [torch.Generator("cpu").manual_seed(job.request.seeds[i]) for job, i in items]
        kwargs: dict[str, Any] = {
            "prompt": [job.prompt for job, _ in items],
            "negative_prompt": [job.request.negative_prompt for job, _ in items],
            "num_inference_steps": key.steps,
            "guidance_scale": key.cfg_scale,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if key.kind == JobKind.TXT2IMG:
            pipe = self.pipe
            kwargs.update(width=key.width, height=key.height)
        else:
            pipe = self.img2img
            kwargs.update(image=[job.init_image for job, _ in items], strength=key.strength)
            # Diffusers builds a schedule of num_inference_steps and runs int(steps * strength) of it; the
            # schedule is lengthened to run at least one, never past bounds.STEPS (prepare checked both).
            kwargs["num_inference_steps"] = bounds.img2img_schedule(key.steps, key.strength or 1.0)
        # Before encoding: a LoRA may change the text encoder too. The img2img pipeline shares these modules.
        self.loras.apply(self.pipe, key.loras)
        embeds = prompts.encode_prompts(
            pipe, kwargs["prompt"], kwargs["negative_prompt"], self.device, self.dtype
        )
        if embeds is not None:  # A1111 emphasis, BREAK or over 75 tokens: see engine/prompts.py
            del kwargs["prompt"], kwargs["negative_prompt"]
            kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = embeds
        pipe.scheduler = make_scheduler(key.sampler, self._base_scheduler_config)
        if key.width * key.height > TILING_ABOVE_PIXELS:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()

        def on_step(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            if self._abort:
                raise _Interrupted
            total = max(1, int(p.num_timesteps))
            latents = kw["latents"]
            live = 0
            for job in jobs:
                with self._lock:
                    if job.cancelled and not job.finished:
                        self._finish(job, JobCancelled(job.job_id), emit)
                    if job.finished:
                        continue
                live += 1
                job.image_steps += per_job[job]
                step = min(total, job.image_steps // job.request.count)
                if step <= job.last_step:
                    continue
                job.last_step = step
                preview = None
                every = job.request.preview_every
                if every > 0 and step % every == 0 and step < total:
                    try:
                        preview = self.previewer.preview(latents[first_pos[job]])
                    except Exception:
                        log.exception("preview failed")
                _safe_emit(emit, JobProgress(job.job_id, step, total, preview))
            if live == 0:
                raise _Interrupted
            return {}

        kwargs["callback_on_step_end"] = on_step
        out = pipe(**kwargs)
        return list(out.images)

    # ------------------------------------------------------------------------------------------- PNGs

    def _submit_png(self, job: Job, index: int, image: Image.Image, nsfw: bool, emit: Emit) -> None:
        future = self._png_pool.submit(self._encode_png, job, index, image, nsfw, emit)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        if future.exception() is not None:
            log.error("PNG encoding failed", exc_info=future.exception())

    def infotext(self, job: Job, index: int) -> str:
        req, key = job.request, job.key
        extras: dict[str, Any] = {}
        if key.kind != JobKind.TXT2IMG:
            extras["Denoising strength"] = key.strength
        if key.kind == JobKind.UPSCALE:
            extras["Hires upscale"] = job.upscale
        if key.loras:
            try:
                extras["Lora hashes"] = self.loras.hashes(key.loras)
            except (loras_mod.LoraError, OSError):  # the file went away after the run: leave it out
                log.warning("could not hash the LoRAs %s", key.loras)
        return pnginfo.format_parameters(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            steps=key.steps,
            sampler=key.sampler,
            cfg_scale=key.cfg_scale,
            seed=req.seeds[index],
            width=key.width,
            height=key.height,
            model=job.source.name,
            model_hash=self.model_hash
            if self.source is not None and self.source.key == job.source.key
            else None,
            extras=extras,
        )

    def _encode_png(self, job: Job, index: int, image: Image.Image, nsfw: bool, emit: Emit) -> None:
        try:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", self.infotext(job, index))
            buf = io.BytesIO()
            image.save(buf, format="PNG", pnginfo=info, compress_level=4)
        except Exception as exc:
            self.fail(job, f"PNG encoding failed: {exc}", emit)
            return
        with self._lock:
            if job.finished:
                return
            job.pngs[index] = (buf.getvalue(), nsfw)
            if len(job.pngs) < job.request.count:
                return
            seeds = job.request.seeds
            images = [ImageResult(i, seeds[i], *job.pngs[i]) for i in sorted(job.pngs)]
            elapsed = time.perf_counter() - (job.started_at or time.perf_counter())
            event = JobDone(job.job_id, images, round(elapsed, 4), job.source.name, self.worker_id)
            self._finish(job, event, emit)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every PNG handed to the pool is encoded (and its JobDone emitted)."""
        with self._lock:
            pending = list(self._futures)
        wait(pending, timeout=timeout)

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
            job.emit = emit
            jobs.append(job)
            with self._lock:
                self._active[job.job_id] = job
        while True:
            batch = self.plan(jobs)
            if not batch:
                break
            self.run_batch(batch, emit)
        self.wait_idle()
        return results

    def close(self) -> None:
        self.wait_idle()
        self._png_pool.shutdown(wait=True)


def _safe_emit(emit: Emit, event: Event) -> None:
    try:
        emit(event)
    except Exception:
        log.exception("could not deliver %s", type(event).__name__)
