"""Model families (SD 1.x, SD 2.x, SDXL), told apart from a model's *contents*, and their defaults.

Torch-free: the bot imports it to list models with their family and native size, the engine to pick the
pipeline class and configs. A checkpoint's name says nothing reliable ("pony_v6.safetensors" is SDXL), so
a ``.safetensors`` file is recognised by its tensor names, read from its JSON header only (bounded: a
header is a few hundred KiB; the tensors after it are never read), and a diffusers folder by its
``model_index.json`` and UNet config.

Per-model overrides live in a JSON sidecar beside the checkpoint, ``name.json`` (the file A1111 keeps
beside a model for its user metadata; its own keys such as ``description``, ``activation text`` or
``preferred weight`` are ignored). YAML is not read: no YAML parser ships with the engine. Keys:
``native_size``, ``steps``, ``cfg``, ``sampler``, ``clip_skip``, ``prediction_type``. The file is
untrusted: bounded in size, each value type-checked against engine/bounds.py; a bad value is dropped, a
broken file ignored, each with one log line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine import bounds
from engine.sampler_names import DEFAULT_SAMPLER, UnknownSamplerError, canonical_sampler

log = logging.getLogger(__name__)

# A checkpoint's header lists ~2,500 tensors (about 250 KiB); a LoRA's may carry kohya's training
# metadata (tag frequencies: a few MiB). Anything past this is not a model worth parsing.
HEADER_BYTES = 32 * 1024 * 1024
SIDECAR_BYTES = 64 * 1024
PREDICTION_TYPES = ("epsilon", "v_prediction")


class Family(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        """How people write it: ``SD 1.x``, ``SD 2.x``, ``SDXL``."""
        return {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[self.value]


class UnknownFamilyError(ValueError):
    """A file that is readable but is none of the families (SD3, Flux, an SDXL refiner, a LoRA...)."""


@dataclass(frozen=True, slots=True)
class FamilyDefaults:
    native_size: int  # the side of the square the model was trained at
    steps: int
    cfg: float
    sampler: str
    clip_skip: int  # A1111's "Clip skip"; 0: the model's own default
    prediction_type: str | None  # "epsilon" / "v_prediction"; None: what the model's scheduler config says


FAMILY_DEFAULTS: dict[Family, FamilyDefaults] = {
    Family.SD1: FamilyDefaults(512, 20, 7.0, DEFAULT_SAMPLER, 0, None),
    # SD 2.x's popular checkpoints (2.0-v, 2.1) are the 768² v-prediction ones; 512-base is epsilon
    # (a sidecar says so: {"native_size": 512, "prediction_type": "epsilon"}).
    Family.SD2: FamilyDefaults(768, 20, 7.0, DEFAULT_SAMPLER, 0, None),
    Family.SDXL: FamilyDefaults(1024, 25, 6.0, DEFAULT_SAMPLER, 0, None),
}

# SDXL's training buckets (Stability's list, about 1024² pixels each), landscape and portrait.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)


# ------------------------------------------------------------------------------------------ headers


def read_safetensors_header(path: str | Path, limit: int = HEADER_BYTES) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor name -> dtype/shape/offsets, and
    ``__metadata__``). Raises ``ValueError`` when the file is not one or its header exceeds ``limit``."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{Path(path).name}: too short to be a .safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size < 2 or size > limit:
            raise ValueError(f"{Path(path).name}: header of {size} bytes (at most {limit})")
        body = f.read(size)
    if len(body) != size:
        raise ValueError(f"{Path(path).name}: truncated header")
    try:
        header = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Path(path).name}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{Path(path).name}: header is not a JSON object")
    return header


def _shape(header: Mapping[str, Any], key: str) -> list[int] | None:
    entry = header.get(key)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if isinstance(shape, list) and all(isinstance(n, int) for n in shape):
        return shape
    return None


def context_dim(header: Mapping[str, Any]) -> int | None:
    """The width of the text embeddings the UNet's cross-attention reads (768 SD 1.x, 1024 SD 2.x,
    2048 SDXL), from any ``attn2.to_k`` weight (full model, or a LoRA's down/A matrix); None if absent."""
    for key in header:
        if "attn2" in key and "to_k" in key and ("lora_down" in key or "lora_A" in key or "lora.down" in key):
            shape = _shape(header, key)
            if shape and len(shape) >= 2:
                return shape[1]
        if key.endswith("attn2.to_k.weight"):
            shape = _shape(header, key)
            if shape and len(shape) == 2:
                return shape[1]
    return None


_BY_CONTEXT = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}


def family_from_keys(header: Mapping[str, Any], name: str = "model") -> Family:
    """The family of a full checkpoint from its tensor names (original or diffusers layout)."""
    keys = [k for k in header if k != "__metadata__"]
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return Family.SDXL
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise UnknownFamilyError(f"{name} is an SDXL refiner, which cannot draw from a prompt alone")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Family.SD2  # OpenCLIP ViT-H text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Family.SD1  # OpenAI CLIP ViT-L text encoder
    # No text encoder (UNet-only files) or diffusers key names: SDXL's UNet has its size embedding.
    if any(k.startswith(("text_encoder_2.", "conditioner.")) for k in keys) or any(
        k.endswith(("label_emb.0.0.weight", "add_embedding.linear_1.weight")) for k in keys
    ):
        return Family.SDXL
    dim = context_dim(header)
    if dim in _BY_CONTEXT:
        return _BY_CONTEXT[dim]
    raise UnknownFamilyError(f"{name} is not an SD 1.x, SD 2.x or SDXL checkpoint (tensor names unknown)")


def _folder_family(path: Path) -> Family:
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8")[:SIDECAR_BYTES])
    except (OSError, ValueError) as exc:
        raise UnknownFamilyError(f"{path.name}: unreadable model_index.json ({exc})") from exc
    if not isinstance(index, dict):
        raise UnknownFamilyError(f"{path.name}: model_index.json is not a JSON object")
    if "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index:
        return Family.SDXL
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8")[:SIDECAR_BYTES])
    except (OSError, ValueError):
        return Family.SD1
    if isinstance(unet, dict) and unet.get("cross_attention_dim") == 1024:
        return Family.SD2
    return Family.SD1


def detect_family(path: str | Path) -> Family:
    """The family of the model at ``path`` (a diffusers folder or a single checkpoint file).

    Raises :class:`UnknownFamilyError` for a readable file of another kind. A pickled ``.ckpt`` cannot be
    looked into without torch (and unpickling runs code): when the header cannot be read the answer is
    SD 1.x, the family nearly all old pickled checkpoints belong to."""
    path = Path(path)
    if path.is_dir():
        return _folder_family(path)
    if path.suffix.lower() != ".safetensors":
        return Family.SD1
    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise UnknownFamilyError(f"cannot read {path.name}: {exc}") from exc
    return family_from_keys(header, path.name)


def detect_prediction_type(path: str | Path, family: Family) -> str | None:
    """``v_prediction`` for a checkpoint that says so (the ``v_pred`` marker key ComfyUI and NoobAI's
    v-pred releases carry), and for an SD 2.x single file (the 768 models are v-prediction; there is no
    reliable mark in the file); None otherwise (the scheduler config decides)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError):
        return None
    if "v_pred" in header:
        return "v_prediction"
    return "v_prediction" if family is Family.SD2 else None


def lora_family(header: Mapping[str, Any]) -> Family | None:
    """The family a LoRA was trained for, from its metadata or tensor names; None when they do not say."""
    meta = header.get("__metadata__")
    if isinstance(meta, dict):
        arch = str(meta.get("modelspec.architecture", "")) + " " + str(meta.get("ss_base_model_version", ""))
        arch = arch.lower()
        if "xl" in arch:
            return Family.SDXL
        if "v2" in arch or "sd_2" in arch:
            return Family.SD2
        if "v1" in arch:
            return Family.SD1
    keys = [k for k in header if k != "__metadata__"]
    if any(
        k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_")) for k in keys
    ):
        return Family.SDXL
    if any(k.startswith("lora_unet_label_emb") for k in keys):
        return Family.SDXL
    return _BY_CONTEXT.get(context_dim(header) or 0)


# ------------------------------------------------------------------------------------------- buckets


def aspect_buckets(family_or_native_size: Family | int) -> list[tuple[int, int]]:
    """The (width, height) sizes ``--ar`` maps to: SDXL's buckets at 1024, the same aspect ratios at
    about ``native²`` pixels (multiples of 64) for other sizes."""
    native = (
        FAMILY_DEFAULTS[family_or_native_size].native_size
        if isinstance(family_or_native_size, Family)
        else int(family_or_native_size)
    )
    area = native * native
    out: list[tuple[int, int]] = []
    for bw, bh in SDXL_BUCKETS:
        ratio = bw / bh
        best: tuple[float, int, int] | None = None
        for h in range(64, 4 * native + 1, 64):
            w = max(64, round(h * ratio / 64) * 64)
            if not 0.85 * area <= w * h <= 1.1 * area:
                continue
            error = abs(math.log((w / h) / ratio)) + abs(math.log(w * h / area)) / 100
            if best is None or error < best[0]:
                best = (error, w, h)
        size = (best[1], best[2]) if best else (native, native)
        if size not in out:
            out.append(size)
    return out


def bucket_for_ratio(width: int, height: int, family_or_native_size: Family | int) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest ``width:height`` (e.g. ``16, 9``)."""
    target = math.log(width / height)
    return min(aspect_buckets(family_or_native_size), key=lambda s: abs(math.log(s[0] / s[1]) - target))


# ------------------------------------------------------------------------------------------ sidecars


def sidecar_path(path: str | Path) -> Path:
    """``name.json`` beside a checkpoint file (``model.safetensors`` -> ``model.json``) or a folder."""
    path = Path(path)
    return path.with_suffix(".json") if path.is_file() else path.parent / f"{path.name}.json"


def _check(key: str, value: Any) -> Any:
    """The sidecar value for ``key``, checked; raises ValueError with the reason."""
    if key in ("native_size", "steps", "clip_skip"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not a whole number")
        if key == "native_size" and (
            value % 64 or value not in bounds.SIDE or value * value not in bounds.PIXELS
        ):
            raise ValueError(f"must be a multiple of 64 with {bounds.PIXELS.hi} pixels at most")
        bound = {"native_size": bounds.SIDE, "steps": bounds.STEPS, "clip_skip": bounds.CLIP_SKIP}[key]
        if value not in bound:
            raise ValueError(f"must be between {bound.lo} and {bound.hi}")
        return value
    if key == "cfg":
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in bounds.CFG:
            raise ValueError(f"must be a number between {bounds.CFG.lo} and {bounds.CFG.hi}")
        return float(value)
    if key == "sampler":
        if not isinstance(value, str) or len(value) > 50:
            raise ValueError("not a sampler name")
        try:
            return canonical_sampler(value)
        except UnknownSamplerError:
            raise ValueError("unknown sampler") from None
    if key == "prediction_type":
        if value not in PREDICTION_TYPES:
            raise ValueError(f"must be one of {', '.join(PREDICTION_TYPES)}")
        return value
    raise KeyError(key)


_SIDECAR_KEYS = ("native_size", "steps", "cfg", "sampler", "clip_skip", "prediction_type")


@lru_cache(maxsize=256)
def _read_sidecar(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Any], ...]:
    """The checked overrides in one sidecar (cached by path, mtime and size: logged once per version)."""
    name = Path(path).name
    if size > SIDECAR_BYTES:
        log.warning("ignoring model sidecar %s: %d bytes (at most %d)", name, size, SIDECAR_BYTES)
        return ()
    try:
        data = json.loads(Path(path).read_bytes()[:SIDECAR_BYTES])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring model sidecar %s: %s", name, str(exc).splitlines()[0][:200])
        return ()
    if not isinstance(data, dict):
        log.warning("ignoring model sidecar %s: not a JSON object", name)
        return ()
    found: list[tuple[str, Any]] = []
    problems: list[str] = []
    for key in _SIDECAR_KEYS:
        if key in data:
            try:
                found.append((key, _check(key, data[key])))
            except ValueError as exc:
                problems.append(f"{key} {str(data[key])[:40]!r} {exc}")
    if problems:
        log.warning("model sidecar %s: ignoring %s", name, "; ".join(problems))
    return tuple(found)


def sidecar_overrides(path: str | Path) -> dict[str, Any]:
    """The valid overrides in the sidecar beside ``path`` ({} when there is none)."""
    side = sidecar_path(path)
    try:
        st = os.stat(side)
    except OSError:
        return {}
    if not side.is_file():
        return {}
    return dict(_read_sidecar(str(side), st.st_mtime_ns, st.st_size))


def model_defaults(path: str | Path, family: Family | None = None) -> FamilyDefaults:
    """The defaults for the model at ``path``: its family's, then what the file says (v-prediction), then
    its sidecar. Raises :class:`UnknownFamilyError` when ``family`` is not given and cannot be detected."""
    family = family or detect_family(path)
    defaults = FAMILY_DEFAULTS[family]
    prediction = detect_prediction_type(path, family)
    if prediction is not None:
        defaults = replace(defaults, prediction_type=prediction)
    overrides = sidecar_overrides(path)
    return replace(defaults, **overrides) if overrides else defaults
