"""LoRAs the AUTOMATIC1111 way: ``<lora:name:weight>`` in a prompt applies ``name.safetensors`` from the
LoRA folder (A1111's ``models/Lora``) at that weight, and the tag itself is not encoded as text.

Tags follow A1111's extra-network syntax: ``<lora:name>`` (weight 1), ``<lora:name:0.8>``, and the newer
``<lora:name:0.8:0.5>`` (text-encoder and UNet weights; diffusers applies one weight per adapter, so the
first is used). A name used twice adds up, as in A1111. Only the positive prompt activates LoRAs (A1111's
rule); the text around a tag is kept as written.

Files load through diffusers' ``load_lora_weights`` (which reads kohya/A1111 files as well as diffusers'
own), once per file and model, as named peft adapters; each batch then switches to its own set with
``set_adapters``, or turns them all off. Requests with different LoRA sets never share a batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import bounds, families
from engine.model_files import PICKLE_SUFFIXES, SAFE_SUFFIXES

log = logging.getLogger(__name__)


_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)

Loras = tuple[tuple[str, float], ...]  # (name as in the tag, weight), sorted by name


def short_hash(path: Path) -> str:
    """A1111's short hash of a LoRA file: the first 12 hex digits of the SHA-256 of a ``.safetensors``
    file's tensor data, after its JSON header (kohya's "addnet" hash, so that editing the metadata does not
    change it); of the whole file for other formats."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if path.suffix.lower() == ".safetensors":
            header = int.from_bytes(f.read(8), "little")
            f.seek(8 + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def default_folder(lora_dir: str | Path | None, models_dir: str | Path | None) -> Path | None:
    """``lora_dir``; else, when ``models_dir`` is A1111's ``models/Stable-diffusion``, its sibling
    ``models/Lora`` if there is one."""
    if lora_dir:
        return Path(lora_dir)
    if models_dir and (Path(models_dir).parent / "Lora").is_dir():
        return Path(models_dir).parent / "Lora"
    return None


class LoraError(ValueError):
    """A LoRA a request names cannot be used; the message says why and what there is."""


def check_family(path: Path, pipe: Any) -> None:
    """Raise LoraError when the LoRA at ``path`` was made for another model family than ``pipe``'s (its
    metadata or key names say which: engine/families.py), or for a text context of another width. Reads
    the ``.safetensors`` header only; a pickle cannot be looked into without loading it."""
    if path.suffix.lower() not in SAFE_SUFFIXES:
        return
    try:
        header = families.read_safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise LoraError(f"LoRA {path.stem!r} is not a readable .safetensors file: {exc}") from exc
    width = pipe.unet.config.cross_attention_dim
    if getattr(pipe, "text_encoder_2", None) is not None:
        family = families.Family.SDXL
    else:
        family = families.Family.SD2 if width == 1024 else families.Family.SD1
    made_for = families.lora_family(header)
    if made_for is not None and made_for is not family:
        raise LoraError(
            f"LoRA {path.stem!r} is made for {made_for.label} models and this model is {family.label}; "
            f"pick a {family.label} LoRA, or a {made_for.label} model"
        )
    dim = families.context_dim(header)
    if made_for is None and dim is not None and dim != width:
        raise LoraError(
            f"LoRA {path.stem!r} is made for another kind of model than this {family.label} one "
            f"(its text context is {dim} wide, the model's {width})"
        )


def extract(prompt: str) -> tuple[str, Loras]:
    """``prompt`` without its ``<lora:...>`` tags, and the LoRAs they name with their weights."""
    weights: dict[str, float] = {}
    for match in _TAG.finditer(prompt):
        name = match.group(1).strip()
        raw = (match.group(2) or "").strip()
        try:
            weight = float(raw) if raw else 1.0
        except ValueError as exc:
            raise LoraError(f"LoRA weight {raw!r} in {match.group(0)!r} is not a number") from exc
        if not math.isfinite(weight):
            raise LoraError(f"LoRA weight in {match.group(0)!r} must be a finite number")
        weights[name] = weights.get(name, 0.0) + weight
    for name, weight in weights.items():
        # The sum too: two tags of 1e308 add up to inf. Peft scales float32/float16 layers by the weight.
        if weight not in bounds.WEIGHT:
            raise LoraError(
                f"LoRA {name!r} has a weight of {weight:g}; it must be between {bounds.WEIGHT.lo:g} and "
                f"{bounds.WEIGHT.hi:g}, all its tags together"
            )
    if not weights:
        return prompt, ()
    text = re.sub(r"[ \t]{2,}", " ", _TAG.sub("", prompt)).strip(" ,")
    return text, tuple(sorted(weights.items()))


@dataclass
class LoraLibrary:
    """The LoRA files of one folder, and the adapters loaded into the current pipeline."""

    folder: Path | None
    allow_pickle: bool = False
    _loaded: dict[Path, str] = field(default_factory=dict)  # file -> adapter name in the pipeline
    _hashes: dict[tuple[Path, float], str] = field(default_factory=dict)  # (file, mtime) -> short hash
    _pipe_id: int | None = None
    _active: Loras | None = None  # the set the pipeline runs with now (None: unknown)

    # Lower-case file stem -> files, from the last walk of the folder. A name is looked up for every request,
    # batch and picture that uses it: walking a large LoRA tree each time would be I/O for nothing. A name
    # not found, or a file gone, walks the folder again, so files added or removed are seen.
    _index: dict[str, list[Path]] = field(default_factory=dict)

    def _scan(self) -> None:
        index: dict[str, list[Path]] = {}
        if self.folder is not None and self.folder.is_dir():
            # A1111 keeps LoRAs in subfolders too (by style, by model); a tag names the file, not the path.
            for path in sorted(self.folder.rglob("*")):
                if path.is_file():
                    index.setdefault(path.stem.lower(), []).append(path)
        self._index = index  # whole, in one step: PNG threads read it while the runner may rescan

    def names(self) -> list[str]:
        self._scan()
        suffixes = SAFE_SUFFIXES + (PICKLE_SUFFIXES if self.allow_pickle else ())
        stems = {p.stem for files in self._index.values() for p in files if p.suffix.lower() in suffixes}
        return sorted(stems, key=str.lower)

    def resolve(self, name: str) -> Path:
        if self.folder is None:
            raise LoraError(f"this bot has no LoRA folder set up, so <lora:{name}> cannot be used")
        found = self._index.get(name.lower())
        if not found or not all(p.is_file() for p in found):
            self._scan()
            found = self._index.get(name.lower(), [])
        usable = [p for p in found if p.suffix.lower() in SAFE_SUFFIXES]
        if not usable and self.allow_pickle:
            usable = [p for p in found if p.suffix.lower() in PICKLE_SUFFIXES]
        if usable:
            return usable[0]
        if found:
            raise LoraError(
                f"LoRA {name!r} is a pickle file ({found[0].name}), which can run code when loaded; "
                "ask the admin for a .safetensors version"
            )
        names = self.names()
        listed = ", ".join(names[:25]) + (" …" if len(names) > 25 else "") if names else "none"
        raise LoraError(f"unknown LoRA {name!r}; available: {listed}")

    def check(self, loras: Loras) -> None:
        """Raise LoraError unless every LoRA named is there (before a request is queued)."""
        for name, _ in loras:
            self.resolve(name)

    def hashes(self, loras: Loras) -> str | None:
        """A1111's ``Lora hashes`` PNG-info value (``name: hash, name: hash``), by which sites such as
        Civitai recognise the LoRAs a picture used; None without LoRAs."""
        if not loras:
            return None
        parts = []
        for name, _ in loras:
            path = self.resolve(name)
            key = (path, path.stat().st_mtime)
            if key not in self._hashes:
                self._hashes[key] = short_hash(path)
            # A1111 takes these two out of names: they would break the list's own syntax.
            parts.append(f"{name.replace(':', '').replace(',', '')}: {self._hashes[key]}")
        return ", ".join(parts)

    def apply(self, pipe: Any, loras: Loras) -> None:
        """Make ``pipe`` run with exactly ``loras`` (loading files it has not seen), or with none."""
        if self._pipe_id != id(pipe):  # another model was loaded: its adapters went with the old one
            self._loaded.clear()
            self._pipe_id, self._active = id(pipe), None
        if loras == self._active or (not loras and not self._loaded):
            return  # already so: set_adapters walks every layer of the UNet, once per batch is waste
        # A torch.compile'd UNet (--compile) hides its layers from diffusers' LoRA code: give it the real
        # module meanwhile. The compiled wrapper runs that same module, so it sees the adapters (and
        # recompiles for them).
        compiled = pipe.unet
        original = getattr(compiled, "_orig_mod", None)
        if original is not None:
            pipe.unet = original
        self._active = None  # unknown until the switch is through
        try:
            self._switch(pipe, loras)
            self._active = loras
        finally:
            if original is not None:
                pipe.unet = compiled

    def _switch(self, pipe: Any, loras: Loras) -> None:
        if not loras:
            pipe.disable_lora()
            return
        for lora in loras:  # all of them before any weight changes
            path = self.resolve(lora[0])
            if path not in self._loaded:
                check_family(path, pipe)
        adapters: list[str] = []
        for name, _ in loras:
            path = self.resolve(name)
            adapter = self._loaded.get(path)
            if adapter is None:
                adapter = f"lora{len(self._loaded)}"
                try:
                    pipe.load_lora_weights(str(path), adapter_name=adapter)
                except Exception as exc:
                    raise LoraError(f"could not load LoRA {path.name}: {exc}") from exc
                self._loaded[path] = adapter
                log.info("loaded LoRA %s as %s", path.name, adapter)
            adapters.append(adapter)
        pipe.enable_lora()
        pipe.set_adapters(adapters, adapter_weights=[weight for _, weight in loras])
