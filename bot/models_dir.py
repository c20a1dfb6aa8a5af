"""The models members can pick, as the bot sees them: MODELS_DIR's entries with their family and native
size (engine/model_catalog.py), and the defaults a job on one of them starts from.

A job's default size follows its model's family (SD 1.x: ``DEFAULT_SIZE``, SD 2.x 768², SDXL 1024², or
what the model's ``name.json`` sidecar says), and ``--ar`` maps to that family's aspect buckets. Reading a
model's family touches the disk (a header, once per version of the file): call these off the event loop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bot.jobs.policy import Defaults
from bot.settings import Settings
from engine.families import FAMILY_DEFAULTS, Family, aspect_buckets
from engine.model_catalog import ModelEntry, catalog, describe, find


def entries(settings: Settings) -> list[ModelEntry]:
    """Every model of MODELS_DIR, sorted by name."""
    return catalog(settings.models_dir)


def choices(settings: Settings, current: str, limit: int = 25) -> list[tuple[str, str]]:
    """(label, name) of the usable models whose name contains ``current``, for a model option's
    autocomplete: ``juggernautXL (SDXL)``, at most ``limit`` (Discord shows 25, 100 characters each)."""
    wanted = current.lower()
    found = [e for e in entries(settings) if e.family is not None and wanted in e.name.lower()]
    return [(e.label[:100], e.name[:100]) for e in found if len(e.name) <= 100][:limit]


def entry_for(settings: Settings, name: str | None) -> ModelEntry | None:
    """The model ``name`` of MODELS_DIR; for no name, ``MODEL`` when it is a local file or folder. None
    when there is no such model, or ``MODEL`` is a hub id (its family is the worker's to find out)."""
    if name:
        return find(settings.models_dir, name)
    path = Path(settings.model).expanduser()
    if not path.exists():
        return None
    try:
        return describe(path)
    except OSError:
        return None


def base_defaults(settings: Settings) -> Defaults:
    return Defaults(
        steps=settings.default_steps,
        cfg=settings.default_cfg,
        sampler=settings.default_sampler,
        size=settings.default_size,
    )


def job_defaults(settings: Settings, entry: ModelEntry | None) -> Defaults:
    """The defaults of a job on ``entry``'s model (the settings' own when its family is unknown): its
    family's size and aspect buckets, and its own steps, CFG and sampler where it has them (a sidecar's;
    SD 2.x's and SDXL's family defaults; SD 1.x models otherwise take the DEFAULT_* settings)."""
    base = base_defaults(settings)
    if entry is None or entry.family is None or entry.native_size is None:
        return base
    base = replace(
        base,
        steps=entry.steps or base.steps,
        cfg=entry.cfg if entry.cfg is not None else base.cfg,
        sampler=entry.sampler or base.sampler,
    )
    if entry.family is Family.SD1 and entry.native_size == FAMILY_DEFAULTS[Family.SD1].native_size:
        return base  # DEFAULT_SIZE is the admin's choice for the SD 1.x models (and the aspects it gives)
    return replace(base, size=entry.native_size, buckets=tuple(aspect_buckets(entry.native_size)))
