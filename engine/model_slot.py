"""The one model a runner holds on its device: which model a request names, loading it, and swapping it
for another without losing the one it had when the new one does not load or fit."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from engine import devices, loading

log = logging.getLogger(__name__)


class ModelSlot:
    """The current pipeline (and the img2img pipeline sharing its modules) of one device."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: torch.device,
        dtype: torch.dtype,
        models_dir: Path | None = None,
        allow_pickle: bool = False,
        single_file_config: str | os.PathLike[str] | None = None,
        compile: bool = False,
        cpu_offload: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.models_dir = models_dir
        self.allow_pickle = allow_pickle
        self.single_file_config = Path(single_file_config) if single_file_config is not None else None
        self.compile = compile
        self.cpu_offload = cpu_offload and device.type == "cuda"
        self.channels_last = channels_last
        self.default_source = loading.resolve_model(os.fspath(model), models_dir)
        self.source: loading.ModelSource | None = None
        self.model_hash: str | None = None
        self.pipe: Any = None
        self.img2img: Any = None
        self.base_scheduler_config: dict[str, Any] = {}
        self.load(self.default_source)

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else ""

    def resolve(self, name: str | None) -> loading.ModelSource:
        """The model a request names: the default for none, else one of MODELS_DIR (ModelLoadError)."""
        wanted = (name or "").strip()
        if not wanted or wanted in (self.default_source.name, self.default_source.location):
            return self.default_source
        if self.source is not None and wanted in (self.source.name, self.source.location):
            return self.source
        return loading.resolve_model_name(name or "", self.models_dir)

    def ensure(self, source: loading.ModelSource) -> None:
        if self.source is None or source.key != self.source.key:
            self.load(source)

    def load(self, source: loading.ModelSource) -> None:
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
        self.base_scheduler_config = dict(pipe.scheduler.config)

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
