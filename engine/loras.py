"""LoRAs the AUTOMATIC1111 way: ``<lora:name:weight>`` in a prompt applies ``name.safetensors`` from the
LoRA folder (A1111's ``models/Lora``) at that weight, and the tag itself is not encoded as text.

Tags follow A1111's extra-network syntax (``<type:arg:arg...>``): ``<lora:name>`` (weight 1),
``<lora:name:0.8>``, ``<lora:name:0.8:0.5>`` (text-encoder, then UNet weight; the UNet's defaults to the
text encoder's), and the named forms ``te=``/``unet=`` in any order (``<lora:name:te=0.5:unet=1>``).
``<lyco:...>`` is read as ``<lora:...>``, as A1111's LoRA extension does. A name used twice adds up, as in
A1111. Only the positive prompt activates LoRAs (A1111's rule). Every tag is cut out of the text exactly as
A1111 does it (nothing around it goes: ``"a cat, <lora:x>"`` encodes ``"a cat, "``). What A1111 can do and
this engine cannot is refused rather than dropped: ``<hypernet:...>`` (hypernetworks), a ``dyn=`` rank,
other named arguments. Other extra-network types are cut out and skipped, as A1111 does (in a Discord
prompt they are mostly markup: ``<a:emoji:123>``, ``<t:1700000000:R>``).

Files load through diffusers' ``load_lora_weights`` (which reads kohya/A1111 files as well as diffusers'
own; pickled ``.pt``/``.ckpt`` ones through the safe unpickler, engine/safe_pickle.py), once per file and
model, as named peft adapters; each batch then switches to its own set with
``set_adapters``, or turns them all off. Requests with different LoRA sets never share a batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from engine import bounds, families, safe_pickle
from engine.model_files import ALL_SUFFIXES, PICKLE_SUFFIXES, SAFE_SUFFIXES

log = logging.getLogger(__name__)


# A1111's extra-network tag (modules/extra_networks.py): a word, a colon, then anything up to ">".
_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TAGS = ("lora", "lyco")  # A1111's LoRA extension registers "lyco" as an alias of "lora"


class Lora(NamedTuple):
    """One LoRA of a prompt: its name as in the tag and its weights on the text encoder and the UNet."""

    name: str
    te: float
    unet: float


Loras = tuple[Lora, ...]  # sorted by name


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


@lru_cache(maxsize=512)
def _made_for(path: Path, version: tuple[int, int]) -> tuple[families.Family | None, int | None]:
    """(family, text context width) a LoRA file says it was made for, from its header (cached per version
    of the file: every request naming it asks)."""
    try:
        header = families.read_safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise LoraError(f"LoRA {path.stem!r} is not a readable .safetensors file: {exc}") from exc
    return families.lora_family(header), families.context_dim(header)


def made_for(path: Path) -> tuple[families.Family | None, int | None]:
    """What :func:`_made_for` says of ``path``; (None, None) for a pickle, which cannot be looked into
    without loading it."""
    if path.suffix.lower() not in SAFE_SUFFIXES:
        return None, None
    try:
        st = path.stat()
    except OSError as exc:
        raise LoraError(f"LoRA {path.stem!r} cannot be read: {exc}") from exc
    return _made_for(path, (st.st_size, st.st_mtime_ns))


def check_model_family(path: Path, family: families.Family) -> None:
    """Raise LoraError when the LoRA at ``path`` says it was made for another family than ``family``."""
    lora_family, _ = made_for(path)
    if lora_family is not None and lora_family is not family:
        raise LoraError(
            f"LoRA {path.stem!r} is made for {lora_family.label} models and this model is {family.label}; "
            f"pick a {family.label} LoRA, or a {lora_family.label} model"
        )


def check_family(path: Path, pipe: Any) -> None:
    """Raise LoraError when the LoRA at ``path`` was made for another model family than ``pipe``'s (its
    metadata or key names say which: engine/families.py), or for a text context of another width. Reads
    the ``.safetensors`` header only."""
    width = pipe.unet.config.cross_attention_dim
    if getattr(pipe, "text_encoder_2", None) is not None:
        family = families.Family.SDXL
    else:
        family = families.Family.SD2 if width == 1024 else families.Family.SD1
    check_model_family(path, family)
    lora_family, dim = made_for(path)
    if lora_family is None and dim is not None and dim != width:
        raise LoraError(
            f"LoRA {path.stem!r} is made for another kind of model than this {family.label} one "
            f"(its text context is {dim} wide, the model's {width})"
        )


def _weight(raw: str, tag: str) -> float:
    try:
        weight = float(raw.strip())
    except ValueError as exc:
        raise LoraError(f"LoRA weight {raw.strip()!r} in {tag!r} is not a number") from exc
    if not math.isfinite(weight):
        raise LoraError(f"LoRA weight in {tag!r} must be a finite number")
    return weight


def _parse_tag(tag: str, args: str) -> tuple[str, float, float]:
    """(name, te, unet) of one tag's arguments, read as A1111 1.10's LoRA extension reads them: an argument
    with exactly one ``=`` is named, the others positional (name, te, unet, dyn)."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if unknown:
        raise LoraError(f"{tag!r}: unknown LoRA argument {unknown[0]}=; use te= and unet=")
    if len(positional) > 3 or "dyn" in named:
        raise LoraError(f"{tag!r}: a dyn (LyCORIS rank) argument is not supported here; remove it")
    name = positional[0].strip() if positional else ""
    if not name or set(name) & set("<>"):
        raise LoraError(f"{tag!r} does not name a LoRA")
    te = _weight(named.get("te", positional[1] if len(positional) > 1 else "1"), tag)
    unet = _weight(named["unet"], tag) if "unet" in named else None
    if unet is None:
        unet = _weight(positional[2], tag) if len(positional) > 2 else te
    return name, te, unet


def extract(prompt: str) -> tuple[str, Loras]:
    """``prompt`` without its extra-network tags (cut as A1111 cuts them), and the LoRAs they name with
    their weights. LoraError for a tag this engine cannot apply (a hypernetwork, an unknown type)."""
    weights: dict[str, tuple[float, float]] = {}
    spelled: dict[str, str] = {}  # lower-case name -> the name as first written
    for match in _TAG.finditer(prompt):
        kind, tag = match.group(1), match.group(0)
        if kind == "hypernet":
            raise LoraError(f"hypernetworks are not supported here; remove {tag!r} (LoRAs are: <lora:name>)")
        if kind not in LORA_TAGS:
            # A1111 cuts any other <word:...> out of the text and skips it. In Discord prompts these are
            # mostly markup, such as an animated emoji <a:name:id> or a timestamp <t:1700000000:R>.
            log.info("skipping unknown extra network %s", tag[:80])
            continue
        name, te, unet = _parse_tag(tag, match.group(2))
        # Files are found by their name in any case (LoraLibrary.resolve): <lora:ink:1><lora:INK:1> is one
        # LoRA at weight 2, spelled as first written, not the same file loaded as two adapters.
        name = spelled.setdefault(name.lower(), name)
        old_te, old_unet = weights.get(name, (0.0, 0.0))
        weights[name] = (old_te + te, old_unet + unet)
    for name, pair in weights.items():
        # The sum too: two tags of 1e308 add up to inf. Peft scales float32/float16 layers by the weight.
        if any(weight not in bounds.WEIGHT for weight in pair):
            shown = "/".join(f"{w:g}" for w in dict.fromkeys(pair))
            raise LoraError(
                f"LoRA {name!r} has a weight of {shown}; it must be between {bounds.WEIGHT.lo:g} and "
                f"{bounds.WEIGHT.hi:g}, all its tags together"
            )
    return _TAG.sub("", prompt), tuple(sorted(Lora(n, te, unet) for n, (te, unet) in weights.items()))


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
        stems = {p.stem for files in self._index.values() for p in files if p.suffix.lower() in ALL_SUFFIXES}
        return sorted(stems, key=str.lower)

    def resolve(self, name: str) -> Path:
        if self.folder is None:
            raise LoraError(f"this bot has no LoRA folder set up, so <lora:{name}> cannot be used")
        found = self._index.get(name.lower())
        if not found or not all(p.is_file() for p in found):
            self._scan()
            found = self._index.get(name.lower(), [])
        # A .safetensors file before a pickle of the same name (reading it needs no unpickler at all).
        usable = [p for p in found if p.suffix.lower() in SAFE_SUFFIXES]
        usable += [p for p in found if p.suffix.lower() in PICKLE_SUFFIXES]
        if usable:
            return usable[0]
        names = self.names()
        listed = ", ".join(names[:25]) + (" …" if len(names) > 25 else "") if names else "none"
        raise LoraError(f"unknown LoRA {name!r}; available: {listed}")

    def check(self, loras: Loras, family: families.Family | None = None) -> None:
        """Raise LoraError unless every LoRA named is there and, when the model's ``family`` is known, made
        for it (before a request is queued)."""
        for lora in loras:
            path = self.resolve(lora.name)
            if family is not None:
                check_model_family(path, family)

    def hashes(self, loras: Loras) -> str | None:
        """A1111's ``Lora hashes`` PNG-info value (``name: hash, name: hash``), by which sites such as
        Civitai recognise the LoRAs a picture used; None without LoRAs."""
        if not loras:
            return None
        parts = []
        for lora in loras:
            name = lora.name
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
            path = self.resolve(lora.name)
            if path not in self._loaded:
                check_family(path, pipe)
        adapters: list[str] = []
        for lora in loras:
            path = self.resolve(lora.name)
            adapter = self._loaded.get(path)
            if adapter is None:
                adapter = f"lora{len(self._loaded)}"
                try:
                    pipe.load_lora_weights(_readable(path, self.allow_pickle), adapter_name=adapter)
                except LoraError:
                    raise
                except Exception as exc:
                    raise LoraError(f"could not load LoRA {path.name}: {exc}") from exc
                self._loaded[path] = adapter
                log.info("loaded LoRA %s as %s", path.name, adapter)
            adapters.append(adapter)
        pipe.enable_lora()
        pipe.set_adapters(adapters, adapter_weights=_adapter_weights(pipe, loras, adapters))


def _readable(path: Path, allow_pickle: bool) -> str | dict[str, Any]:
    """What ``load_lora_weights`` reads: a ``.safetensors`` file's path, or a pickle's tensors as the safe
    unpickler reads them (LoraError naming what it refused)."""
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return str(path)
    try:
        loaded = safe_pickle.load(path, allow_pickle=allow_pickle, max_bytes=safe_pickle.MAX_LORA_BYTES)
        return safe_pickle.state_dict(loaded)
    except (safe_pickle.PickleRefused, safe_pickle.PickleLoadError) as exc:
        raise LoraError(f"LoRA {path.stem!r}: {exc}") from exc


_DENOISERS = ("unet", "transformer")


def _adapter_weights(pipe: Any, loras: Loras, adapters: list[str]) -> list[Any]:
    """set_adapters' weights: one number where the text encoder and UNet weights agree, else a weight for
    each part that the adapter has layers in (naming a part it lacks makes diffusers warn)."""
    parts = pipe.get_list_adapters() if any(lora.te != lora.unet for lora in loras) else {}
    weights: list[Any] = []
    for lora, adapter in zip(loras, adapters, strict=True):
        if lora.te == lora.unet:
            weights.append(lora.unet)
            continue
        weights.append(
            {
                part: lora.unet if part in _DENOISERS else lora.te
                for part, names in parts.items()
                if adapter in names
            }
        )
    return weights
