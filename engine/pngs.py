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

from engine import pnginfo
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


def png_parameters(job: Job, index: int, model_hash: str | None, loras: LoraLibrary) -> str:
    """A1111's PNG info of image ``index`` of ``job`` (``model_hash``: None when unknown)."""
    req, key = job.request, job.key
    extras: dict[str, Any] = {}
    if key.kind != JobKind.TXT2IMG:
        extras["Denoising strength"] = key.strength
    if key.kind == JobKind.UPSCALE:
        extras["Hires upscale"] = job.upscale
    if key.loras:
        try:
            extras["Lora hashes"] = loras.hashes(key.loras)
        except (LoraError, OSError):  # the file went away after the run: leave it out
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
        model_hash=model_hash,
        extras=extras,
    )
