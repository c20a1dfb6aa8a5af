"""PNG encoding off the GPU's critical path: finished images are compressed, with their PNG info (A1111's
``parameters`` text), in a small thread pool while the next batch runs. Torch-free."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from PIL import Image, PngImagePlugin

from engine import bounds, pnginfo, sampler_names
from engine.jobs import Job
from engine.loras import LoraError, LoraLibrary
from engine.protocol import JobKind

log = logging.getLogger(__name__)


class PngEncoder:
    """A pool of ``workers`` threads that encode images to PNG with a ``parameters`` text chunk."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="png")
        self._lock = threading.Lock()
        self._futures: set[Future[None]] = set()

    def submit(
        self,
        image: Image.Image,
        parameters: Callable[[], str],
        done: Callable[[bytes], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Encode ``image`` in the pool, then ``done(png)``; ``failed(error)`` when it cannot be encoded.
        ``parameters`` (the PNG info text) is computed in the pool too: it may hash LoRA files."""
        future = self._pool.submit(self._encode, image, parameters, done, failed)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _encode(
        self,
        image: Image.Image,
        parameters: Callable[[], str],
        done: Callable[[bytes], None],
        failed: Callable[[Exception], None],
    ) -> None:
        try:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", parameters())
            buf = io.BytesIO()
            image.save(buf, format="PNG", pnginfo=info, compress_level=4)
        except Exception as exc:
            failed(exc)
            return
        done(buf.getvalue())

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        if future.exception() is not None:
            log.error("PNG encoding failed", exc_info=future.exception())

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every image handed to the pool is encoded (and its callback has run)."""
        with self._lock:
            pending = list(self._futures)
        wait(pending, timeout=timeout)

    def close(self) -> None:
        self.wait_idle()
        self._pool.shutdown(wait=True)


# The runner seeds one CPU torch.Generator per image (engine/runner.py): A1111's "CPU" noise source, which
# draws the same initial noise for the same seed and size. Without the field A1111 would use GPU noise.
RNG_SOURCE = "CPU"
# An upscale resizes its init image with Pillow's Lanczos (engine/requests.py), like A1111's "Lanczos"
# upscaler does in the pixel space between the two passes of its hires fix.
UPSCALER = "Lanczos"


def png_parameters(
    job: Job, index: int, model_hash: str | None, loras: LoraLibrary, clip_skip: int | None = None
) -> str:
    """A1111's PNG info of image ``index`` of ``job`` (``model_hash``: None when unknown; ``clip_skip``: the
    one that ran, when the runner resolved the request's 0 to the model's default). engine/README.md ("PNG
    info") says which fields are written when, and why. The fields go in the order A1111 writes them."""
    req, key = job.request, job.key
    sampler, schedule_type = sampler_fields(job)
    width, height = key.width, key.height
    extras: dict[str, Any] = {}
    if key.kind != JobKind.TXT2IMG:
        extras["Denoising strength"] = key.strength
    ran = key.clip_skip if clip_skip is None else clip_skip
    if ran > 1:  # A1111 writes it only above its default of 1
        extras["Clip skip"] = ran
    extras["RNG"] = RNG_SOURCE
    if key.kind == JobKind.UPSCALE and job.upscale:
        width, height, hires = hires_fields(job)
        extras.update(hires)
    if key.loras:
        try:
            extras["Lora hashes"] = loras.hashes(key.loras)
        except (LoraError, OSError):  # the file went away after the run: leave it out
            log.warning("could not hash the LoRAs %s", key.loras)
    if job.ti_hashes:  # computed when the request was prepared (engine/embeddings.py)
        extras["TI hashes"] = job.ti_hashes
    if job.pad_conds:
        extras["Pad conds"] = True
    return pnginfo.format_parameters(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        steps=key.steps,
        sampler=sampler,
        schedule_type=schedule_type,
        cfg_scale=key.cfg_scale,
        seed=req.seeds[index],
        width=width,
        height=height,
        model=job.source.name,
        model_hash=model_hash,
        extras=extras,
    )


def sampler_fields(job: Job) -> tuple[str, str]:
    """``Sampler`` and ``Schedule type`` as A1111 1.10 writes them: the sampler's name and the schedule
    type that ran (``key.scheduler``: Automatic resolved to the sampler's default, e.g. Karras). A1111
    writes the request's ``Automatic`` instead where the sampler has no default schedule of its own (it then
    runs the model's sigmas, which are the Uniform schedule) or runs its own timesteps."""
    key, req = job.key, job.request
    try:  # the schedule type asked for: at the end of a combined name, else the request's field
        _, asked = sampler_names.split_combined(sampler_names.canonical_sampler(req.sampler))
        asked = asked or sampler_names.schedule_label(req.scheduler)
    except sampler_names.UnknownSamplerError:  # cannot happen for a prepared job; write what ran
        asked = key.scheduler
    own = next((s.default_schedule for s in sampler_names.SAMPLERS if s.name == key.sampler), None)
    if asked == sampler_names.AUTOMATIC and own is None:
        return key.sampler, sampler_names.AUTOMATIC
    return key.sampler, key.scheduler


def hires_fields(job: Job) -> tuple[int, int, dict[str, Any]]:
    """An upscale as A1111's hires fix: the first-pass size (the init image's) for ``Size``, and the
    fields with which a paste into A1111's txt2img renders the same picture at the same size: the first
    pass from the same seed and settings, a Lanczos resize, then ``Hires steps`` denoising steps at the
    ``Denoising strength``. (Without them a paste would double the upscaled size once more: A1111 turns
    its hires fix on for any text with a ``Denoising strength``.)"""
    key, factor = job.key, job.upscale or 1.0
    first_w, first_h = round(key.width / factor), round(key.height / factor)
    fields: dict[str, Any] = {}
    if int(first_w * factor) == key.width and int(first_h * factor) == key.height:
        fields["Hires upscale"] = factor
    else:  # A1111 computes the target as int(size * scale): name the exact size instead
        fields["Hires resize"] = f"{key.width}x{key.height}"
    # The steps that actually run: diffusers runs int(schedule * strength) of an img2img schedule, while
    # A1111's hires pass runs exactly its Hires steps.
    strength = key.strength or 1.0
    fields["Hires steps"] = int(bounds.img2img_schedule(key.steps, strength) * strength)
    fields["Hires upscaler"] = UPSCALER
    return first_w, first_h, fields
