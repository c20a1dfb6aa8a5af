"""Finding and loading a Stable Diffusion model: SD 1.x, SD 2.x or SDXL (engine/families.py tells which).

A model spec is one of:

- a local diffusers folder (``model_index.json`` inside);
- a single checkpoint file as AUTOMATIC1111 users keep them (``.safetensors``; ``.ckpt``/``.pt``/``.bin``
  through torch's weights-only unpickler, engine/safe_pickle.py), loaded with ``from_single_file`` offline
  from a local diffusers config folder of its family (shipped with the engine, engine/sdxl.py);
- a name in MODELS_DIR (a file stem, a file name, or a sub-folder), which is how requests pick a model;
- a Hugging Face hub id (``org/name``), downloaded once with a progress bar and cached.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.convert import loadable_path
from engine.families import Family, UnknownFamilyError, detect_family, model_defaults
from engine.model_files import ALL_SUFFIXES, is_diffusers_folder, list_models
from engine.model_hashes import default_cache
from engine.safe_pickle import PickleLoadError, PickleRefused

log = logging.getLogger(__name__)

_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,12}\]$")  # A1111 shows models as "name [hash]"


class ModelLoadError(Exception):
    """A model that cannot be found or loaded; the message names the model and says why."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    kind: Literal["folder", "file", "hub"]
    location: str  # a path (folder, file) or a hub id
    name: str  # what PNG info and events call it: the file stem, folder name or hub id

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.location}"


def _source_for_path(path: Path) -> ModelSource:
    path = path.resolve()
    if is_diffusers_folder(path):
        return ModelSource("folder", str(path), path.name)
    if path.is_file():
        if path.suffix.lower() not in ALL_SUFFIXES:
            raise ModelLoadError(
                f"model file {path} has an unknown type; expected one of {', '.join(ALL_SUFFIXES)}"
            )
        return ModelSource("file", str(path), path.stem)
    raise ModelLoadError(f"model folder {path} has no model_index.json: it is not a diffusers model folder")


def resolve_model_name(name: str, models_dir: str | Path | None) -> ModelSource:
    """A model a *request* names: only a file or diffusers folder directly inside ``models_dir`` (no paths,
    no hub ids: a chat user must not make the worker read arbitrary files or download models)."""
    base = Path(models_dir) if models_dir is not None else None
    clean = _HASH_SUFFIX.sub("", name.strip())
    if base is not None and base.is_dir() and clean and "/" not in clean and "\\" not in clean:
        if not clean.startswith("."):
            for candidate in [base / clean, *(base / f"{clean}{s}" for s in ALL_SUFFIXES)]:
                if candidate.is_file() or is_diffusers_folder(candidate):
                    return _source_for_path(candidate)
    available = list_models(base)
    if base is None:
        raise ModelLoadError(f"model {name!r} not found: this worker has no MODELS_DIR to pick models from")
    hint = f"; available: {', '.join(available)}" if available else "; it is empty"
    raise ModelLoadError(f"model {name!r} not found in MODELS_DIR{hint}")


def resolve_model(spec: str, models_dir: str | Path | None = None) -> ModelSource:
    """Where ``spec`` points. Raises :class:`ModelLoadError` with the valid names when nothing matches."""
    spec = spec.strip()
    if not spec:
        raise ModelLoadError("empty model name")
    name = _HASH_SUFFIX.sub("", spec)
    if models_dir is not None:
        base = Path(models_dir)
        if base.is_dir() and "/" not in name and "\\" not in name and name not in (".", ".."):
            for candidate in [base / name, *(base / f"{name}{s}" for s in ALL_SUFFIXES)]:
                if candidate.is_file() or is_diffusers_folder(candidate):
                    return _source_for_path(candidate)
    path = Path(spec).expanduser()
    if path.exists():
        return _source_for_path(path)
    if re.fullmatch(r"\w[\w.\-]*/\w[\w.\-]*", spec) and not spec.endswith(ALL_SUFFIXES):
        return ModelSource("hub", spec, spec)
    available = list_models(models_dir)
    where = f" in MODELS_DIR {models_dir}" if models_dir is not None else ""
    hint = f"; available: {', '.join(available)}" if available else ""
    raise ModelLoadError(f"model {spec!r} not found{where}: not a file, a diffusers folder or a hub id{hint}")


def model_hash(path: str | Path) -> str:
    """AUTOMATIC1111's ``Model hash`` (its "AutoV2"): the first 10 hex digits of the file's SHA-256, read
    once per version of the file (engine/model_hashes.py)."""
    return default_cache().sha256(path)[:10]


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); use what this version takes."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def default_single_file_config(family: Family = Family.SD1) -> Path | None:
    """The diffusers config folder (configs + tokenizers, no weights) of ``family``'s base model, built from
    files that ship with the engine and cached (engine/sd15.py, engine/sdxl.py); ``None`` if it cannot be
    written."""
    from engine.sd15 import sd15_config_dir
    from engine.sdxl import sd2_config_dir, sdxl_config_dir

    build = {Family.SD1: sd15_config_dir, Family.SD2: sd2_config_dir, Family.SDXL: sdxl_config_dir}[family]
    try:
        return build()
    except OSError as exc:
        log.warning("cannot write the %s config folder: %s", family.label, exc)
        return None


def pipeline_family(pipe: Any) -> Family:
    """The family of a loaded pipeline (SDXL: two text encoders; SD 2.x: a 1024-wide text context)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return Family.SDXL
    return Family.SD2 if pipe.unet.config.cross_attention_dim == 1024 else Family.SD1


def _source_family(source: ModelSource) -> Family:
    """The family of ``source`` before loading it: from its files, or a hub model's model_index.json."""
    if source.kind != "hub":
        try:
            return detect_family(source.location)
        except UnknownFamilyError as exc:
            raise ModelLoadError(f"cannot load model {source.name}: {exc}") from exc
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(source.location, local_files_only=True)
    except (OSError, ValueError):
        if _offline():
            raise
        index = DiffusionPipeline.load_config(source.location)
    return Family.SDXL if "XL" in str(index.get("_class_name", "")) else Family.SD1


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _set_prediction_type(pipe: Any, source: ModelSource, family: Family) -> None:
    """A v-prediction model's scheduler predicts v: from the file's mark, an SD 2.x single file, or the
    model's sidecar (engine/families.py); the samplers the engine swaps in keep it."""
    if source.kind == "hub":
        return
    wanted = model_defaults(source.location, family).prediction_type
    if wanted is not None and pipe.scheduler.config.get("prediction_type") != wanted:
        log.info("%s: %s", source.name, wanted)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=wanted)


def load_pipeline(
    source: ModelSource,
    *,
    dtype: Any = None,
    allow_pickle: bool = False,
    single_file_config: str | Path | None = None,
) -> Any:
    """A ``StableDiffusionPipeline`` (SD 1.x, 2.x) or ``StableDiffusionXLPipeline`` on the CPU (the
    caller moves it), without the safety checker; the family comes from the model's files.

    Raises :class:`ModelLoadError` with one clear reason naming the model."""
    try:
        family = _source_family(source)
        pipeline_class = _pipeline_class(family)
        common: dict[str, Any] = {}
        if family is not Family.SDXL:  # SDXL pipelines have no safety checker to turn off
            common.update(safety_checker=None, requires_safety_checker=False)
        if dtype is not None:
            common[_dtype_keyword()] = dtype
        if source.kind == "folder":
            pipe = pipeline_class.from_pretrained(source.location, local_files_only=True, **common)
        elif source.kind == "hub":
            try:
                # Cached copies first: no network round trip when the model is already here.
                pipe = pipeline_class.from_pretrained(source.location, local_files_only=True, **common)
            except (OSError, ValueError):
                if _offline():
                    raise
                log.info("downloading %s from the Hugging Face hub (once; it is cached)", source.location)
                pipe = pipeline_class.from_pretrained(source.location, **common)
        else:
            pipe = _load_single_file(source, allow_pickle, single_file_config, common, family)
        _set_prediction_type(pipe, source, family)
        return pipe
    except ModelLoadError:
        raise
    except Exception as exc:  # every loader failure becomes one clear reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load model {source.name} ({source.location}): {reason}") from exc


def _pipeline_class(family: Family) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family is Family.SDXL else StableDiffusionPipeline


def _load_single_file(
    source: ModelSource,
    allow_pickle: bool,
    config: str | Path | None,
    common: dict[str, Any],
    family: Family = Family.SD1,
) -> Any:
    path = Path(source.location)
    # --single-file-config describes one architecture: it serves the files of its own family; the others
    # load with the configs the engine ships.
    config_dir = Path(config) if config is not None else None
    if config_dir is None or not is_diffusers_folder(config_dir) or detect_family(config_dir) is not family:
        config_dir = default_single_file_config(family)
    if config_dir is None or not is_diffusers_folder(config_dir):
        raise ModelLoadError(
            f"cannot load {path.name}: single-file checkpoints need a local diffusers config folder "
            f"(--single-file-config DIR); {config_dir} is not one"
        )
    # Pickles (.ckpt/.pt/.bin) load through torch's weights-only unpickler; one that needs more is refused
    # with what it asked for, unless pickles are allowed (engine/safe_pickle.py, engine/convert.py).
    try:
        with loadable_path(path, allow_pickle) as readable:
            return _pipeline_class(family).from_single_file(
                str(readable), config=str(config_dir), local_files_only=True, **common
            )
    except (PickleRefused, PickleLoadError) as exc:
        raise ModelLoadError(str(exc)) from exc
