"""The models a runner holds: which model a request names, and a cache of loaded ones so that jobs
switching between models do not reload them from disk.

The cache has two tiers, like AUTOMATIC1111's "checkpoints loaded at the same time" and "checkpoints to
cache in RAM": up to ``cache_models`` models (and ``cache_gb`` gigabytes of weights, when set) stay on the
device, ready; the least recently used one beyond that moves to CPU RAM when ``cache_ram`` allows, and is
dropped after. A model that does not load, or does not fit on the device even alone, fails its jobs and
leaves the models that were there working.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine import devices, loading
from engine.families import Family

log = logging.getLogger(__name__)

GIB = 1 << 30


@dataclass(eq=False)
class LoadedModel:
    """One loaded pipeline (with the img2img pipeline sharing its modules) and where it is."""

    source: loading.ModelSource
    pipe: Any
    model_hash: str | None
    nbytes: int
    img2img: Any = None
    base_scheduler_config: dict[str, Any] = field(default_factory=dict)
    on_device: bool = False
    family: Family = Family.SD1
    # A copy of the pipeline's tokenizer for counting a request's chunks on the worker's reader thread while
    # the runner thread encodes: a fast tokenizer keeps padding and truncation as state, set before each
    # call, so two threads on one tokenizer can encode "" unpadded into a 2-token negative (a failed batch).
    counting_tokenizer: Any = None


def weight_bytes(pipe: Any) -> int:
    """Bytes of the pipeline's weights (parameters and buffers of every torch module it has)."""
    total = 0
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


class ModelSlot:
    """The current pipeline of one device, and the cache of the others (see the module's docstring)."""

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
        cache_models: int = 2,
        cache_ram: int = 0,
        cache_gb: float = 0.0,
    ) -> None:
        if cache_models < 1 or cache_ram < 0 or cache_gb < 0:
            raise ValueError("the model cache keeps at least 1 model on the device, and no negative budget")
        self.device = device
        self.dtype = dtype
        self.models_dir = models_dir
        self.allow_pickle = allow_pickle
        self.single_file_config = Path(single_file_config) if single_file_config is not None else None
        self.compile = compile
        self.cpu_offload = cpu_offload and device.type == "cuda"
        self.channels_last = channels_last
        self.cache_models, self.cache_ram, self.cache_bytes = cache_models, cache_ram, int(cache_gb * GIB)
        self.disk_loads: Counter[str] = Counter()  # ModelSource.key -> times read from disk
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self.current: LoadedModel | None = None
        self.default_source = loading.resolve_model(os.fspath(model), models_dir)
        self.load(self.default_source)

    # The current model's parts, as the runner reads them.
    @property
    def source(self) -> loading.ModelSource | None:
        return self.current.source if self.current is not None else None

    @property
    def name(self) -> str:
        return self.current.source.name if self.current is not None else ""

    @property
    def pipe(self) -> Any:
        return self.current.pipe if self.current is not None else None

    @property
    def img2img(self) -> Any:
        return self.current.img2img if self.current is not None else None

    @property
    def model_hash(self) -> str | None:
        return self.current.model_hash if self.current is not None else None

    @property
    def family(self) -> Family:
        return self.current.family if self.current is not None else Family.SD1

    @property
    def base_scheduler_config(self) -> dict[str, Any]:
        return self.current.base_scheduler_config if self.current is not None else {}

    @property
    def counting_tokenizer(self) -> Any:
        """The current model's tokenizer for other threads than the runner's (None while none is loaded)."""
        return self.current.counting_tokenizer if self.current is not None else None

    def hash_of(self, source: loading.ModelSource) -> str | None:
        """The hash of ``source`` if it is loaded (a PNG is encoded after the batch: the model may have
        changed since)."""
        entry = self._cache.get(source.key)
        return entry.model_hash if entry is not None else None

    def cached(self) -> list[tuple[str, bool]]:
        """(model name, on the device) of every loaded model, least recently used first."""
        return [(e.source.name, e.on_device) for e in self._cache.values()]

    def resolve(self, name: str | None) -> loading.ModelSource:
        """The model a request names: the default for none, else one of MODELS_DIR (ModelLoadError)."""
        wanted = (name or "").strip()
        if not wanted or wanted in (self.default_source.name, self.default_source.location):
            return self.default_source
        for entry in list(self._cache.values()):
            if wanted in (entry.source.name, entry.source.location):
                return entry.source
        return loading.resolve_model_name(name or "", self.models_dir)

    def ensure(self, source: loading.ModelSource) -> None:
        current = self.current
        if current is None or source.key != current.source.key or not current.on_device:
            self.load(source)

    def load(self, source: loading.ModelSource) -> None:
        """Make ``source`` current: from the cache when it is there, else from disk. On failure the
        models that were loaded stay (ModelLoadError)."""
        t0 = time.perf_counter()
        entry = self._cache.get(source.key)
        from_disk = entry is None
        if entry is None:
            pipe = loading.load_pipeline(
                source,
                dtype=self.dtype,
                allow_pickle=self.allow_pickle,
                single_file_config=self.single_file_config,
            )
            self.disk_loads[source.key] += 1
            digest = loading.model_hash(source.location) if source.kind == "file" else None
            family = loading.pipeline_family(pipe)
            entry = LoadedModel(source, pipe, digest, weight_bytes(pipe), family=family)
        if not entry.on_device:
            self._to_device(entry)
        if entry.img2img is None:
            self._install(entry)
        self._cache[source.key] = entry
        self._cache.move_to_end(source.key)
        self.current = entry
        self._trim_ram()
        log.info(
            "%s %s on %s (%s) in %.1fs; loaded: %s",
            "loaded" if from_disk else "switched to",
            source.name,
            self.device,
            self.dtype,
            time.perf_counter() - t0,
            ", ".join(f"{n}{'' if dev else ' (RAM)'}" for n, dev in self.cached()),
        )

    # ------------------------------------------------------------------------------------- placement

    def _on_device(self, but: LoadedModel | None = None) -> list[LoadedModel]:
        return [e for e in self._cache.values() if e.on_device and e is not but]

    def _to_device(self, entry: LoadedModel) -> None:
        """Place ``entry`` on the device, moving least recently used models off it first while the budget
        asks, and all of them when it does not fit beside them; if it does not fit alone, the models moved
        off go back and ModelLoadError says why."""
        moved: list[LoadedModel] = []

        def over_budget() -> bool:
            others = self._on_device(but=entry)
            if not others:
                return False
            used = sum(e.nbytes for e in others) + entry.nbytes
            return len(others) + 1 > self.cache_models or bool(self.cache_bytes and used > self.cache_bytes)

        while over_budget():
            moved.append(self._off_device(self._on_device(but=entry)[0]))
        try:
            try:
                self._place(entry.pipe)
            except Exception as exc:
                if not (devices.is_oom(exc) and self._on_device(but=entry)):
                    raise
                log.warning("%s does not fit beside the loaded models; moving them off", entry.source.name)
                entry.pipe.to("cpu")
                moved += [self._off_device(e) for e in self._on_device(but=entry)]
                self._place(entry.pipe)
        except Exception as exc:
            entry.pipe.to("cpu")
            devices.empty_cache(self.device)
            for back in reversed(moved):  # the most recently used first, as far as they fit
                try:
                    self._place(back.pipe)
                    back.on_device = True
                except Exception:
                    back.pipe.to("cpu")
                    devices.empty_cache(self.device)
                    break
            self._trim_ram()
            raise loading.ModelLoadError(
                f"could not move model {entry.source.name} to {self.device}: {exc}"
            ) from exc
        entry.on_device = True

    def _off_device(self, entry: LoadedModel) -> LoadedModel:
        entry.on_device = False
        entry.pipe.to("cpu")
        devices.empty_cache(self.device)
        return entry

    def _trim_ram(self) -> None:
        """Drop the least recently used models that are off the device, beyond ``cache_ram``."""
        off = [key for key, e in self._cache.items() if not e.on_device]
        for key in off[: max(0, len(off) - self.cache_ram)]:
            dropped = self._cache.pop(key)
            if dropped is self.current:
                self.current = None
            log.info("dropped %s from the model cache", dropped.source.name)

    def _install(self, entry: LoadedModel) -> None:
        from diffusers import AutoPipelineForImage2Image

        # The img2img pipeline of the same family, sharing the modules (no copy of the weights).
        entry.img2img = AutoPipelineForImage2Image.from_pipe(entry.pipe)
        entry.img2img.set_progress_bar_config(disable=True)
        entry.base_scheduler_config = dict(entry.pipe.scheduler.config)
        entry.counting_tokenizer = copy.deepcopy(getattr(entry.pipe, "tokenizer", None))

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
