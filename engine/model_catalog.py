"""What the models of a MODELS_DIR are: each one's name, family and native size, for ``/models``, the
``model`` option's autocomplete, a job's default size, and what a NATS worker announces. Torch-free.

A model's family is read from its contents (engine/families.py: a ``.safetensors`` header, a diffusers
folder's configs), once per version of the file: entries are cached by path, size and mtime.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.families import (
    Family,
    UnknownFamilyError,
    detect_family,
    model_defaults,
    sidecar_overrides,
    sidecar_path,
)
from engine.model_files import model_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    family: Family | None  # None: the file is no model this engine can run (``problem`` says why)
    native_size: int | None  # the side of its square default picture (a sidecar may change it)
    problem: str = ""
    # A job's defaults on this model where they are its own (its sidecar's, or its family's beyond SD 1.x,
    # whose defaults are the bot's settings); None: the bot's setting.
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None

    @property
    def label(self) -> str:
        """``juggernautXL (SDXL)``; what autocomplete and /models show."""
        return f"{self.name} ({self.family.label if self.family is not None else 'unusable'})"


@lru_cache(maxsize=1024)
def _describe(path: str, name: str, version: tuple[int, ...]) -> ModelEntry:
    """``version``: size and mtime of the model and of its sidecar, so a changed file is read again."""
    try:
        family = detect_family(path)
        defaults = model_defaults(path, family)
    except (UnknownFamilyError, OSError) as exc:
        log.info("model %s is not usable: %s", name, exc)
        return ModelEntry(name, None, None, str(exc)[:200])
    # An SD 1.x model's defaults are the bot's settings unless its sidecar names its own.
    own = set(sidecar_overrides(path)) if family is Family.SD1 else {"steps", "cfg", "sampler"}
    return ModelEntry(
        name,
        family,
        defaults.native_size,
        steps=defaults.steps if "steps" in own else None,
        cfg=defaults.cfg if "cfg" in own else None,
        sampler=defaults.sampler if "sampler" in own else None,
    )


def _version(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for item in (path / "model_index.json" if path.is_dir() else path, sidecar_path(path)):
        try:
            st = os.stat(item)
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [-1, -1]
    return tuple(out)


def describe(path: str | os.PathLike[str], name: str | None = None) -> ModelEntry:
    """The entry of the model at ``path`` (a checkpoint file or a diffusers folder)."""
    target = Path(path)
    return _describe(str(target), name or (target.name if target.is_dir() else target.stem), _version(target))


def catalog(models_dir: str | Path | None) -> list[ModelEntry]:
    """Every model of ``models_dir``, sorted by name; [] when it is unset or missing."""
    entries = []
    for name, path in model_paths(models_dir).items():
        entries.append(describe(path, name))
    return entries


def find(models_dir: str | Path | None, name: str) -> ModelEntry | None:
    """The entry of the model called ``name`` in ``models_dir`` (None: there is none)."""
    path = model_paths(models_dir).get(name)
    if path is None:
        return None
    return describe(path, name)
