"""Textual-inversion embeddings the AUTOMATIC1111 way: a file ``name.pt`` (or ``.bin``, ``.safetensors``) in
the embeddings folder (A1111's ``embeddings/``) is applied wherever ``name`` appears as a word of a prompt
or negative prompt (case-blind, as A1111 matches CLIP tokens, which are lower-case); nothing else is needed.

File layouts, as A1111 1.10 reads them: A1111's own (``string_to_param: {"*": vectors}``), a single-key
dict of vectors (diffusers concepts, kohya's ``emb_params``), and SDXL's ``clip_l``/``clip_g`` pair (one
set of vectors per text encoder). Pickles go through the safe unpickler (engine/safe_pickle.py).

An embedding loads lazily, the first time a prompt names it, into the pipeline's tokenizer and text encoder
(diffusers' ``load_textual_inversion``) under a token of its own (``ti<hash>x``: never a word of CLIP's
vocabulary, whatever the file is called); the texts the runner encodes have each name replaced by that
token, so the pipeline's own encoding and engine/prompts.py's A1111 encoding (which expands a token of n
vectors to n tokens) both see it. At most :data:`MAX_LOADED` stay loaded per pipeline, least recently used
unloaded first, and one request may name at most :data:`MAX_PER_REQUEST`.

Torch-free at import: the bot lists names with :func:`engine.model_files.list_embeddings`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import safe_pickle
from engine.model_files import EMBEDDING_SUFFIXES, PICKLE_SUFFIXES, embedding_files

if TYPE_CHECKING:
    from engine.jobs import Job

log = logging.getLogger(__name__)

MAX_PER_REQUEST = 16
MAX_LOADED = 64
# How long a walk of the folder serves: any word of any prompt may be a name, so a miss cannot trigger a
# new walk the way LoRAs do; files added are seen within this many seconds.
RESCAN_SECONDS = 5.0
MAX_VECTORS = 75  # one chunk: A1111 moves an embedding that does not fit to the next chunk, whole
# Names a prompt cannot write as plain text (A1111's emphasis, prompt editing and extra-network syntax).
_UNWRITABLE = set("()[]{}<>:|\\")
SDXL_KEYS = ("clip_l", "clip_g")


class EmbeddingError(ValueError):
    """An embedding a request names cannot be used; the message names it and says why."""


def default_folder(
    embeddings_dir: str | os.PathLike[str] | None, models_dir: str | os.PathLike[str] | None
) -> Path | None:
    """``embeddings_dir``; else, when ``models_dir`` is A1111's ``models/Stable-diffusion``, the
    ``embeddings`` folder beside ``models/`` (A1111 keeps it at its top level) if there is one."""
    if embeddings_dir:
        return Path(embeddings_dir)
    if models_dir:
        candidate = Path(models_dir).resolve().parent.parent / "embeddings"
        if candidate.is_dir():
            return candidate
    return None


def token_for(name: str) -> str:
    """The tokenizer token an embedding is loaded under (lower-case: CLIP's tokenizer lower-cases text)."""
    return f"ti{hashlib.sha1(name.lower().encode()).hexdigest()[:10]}x"


@dataclass(frozen=True)
class Embedding:
    name: str  # the file stem
    path: Path
    vectors: dict[str, Any]  # "" -> (n, dim) for SD 1.x/2.x; clip_l / clip_g -> (n, dim) for SDXL
    count: int  # vectors per use of the name
    short_hash: str  # A1111's: the first 12 hex digits of the file's SHA-256

    @property
    def sdxl(self) -> bool:
        return "" not in self.vectors


def _one_term(obj: Any, path: Path) -> dict[str, Any]:
    """The vectors of a loaded embedding file, by text encoder."""
    import torch

    def two_d(t: Any, what: str) -> Any:
        if not isinstance(t, torch.Tensor) or t.ndim not in (1, 2) or not t.is_floating_point():
            raise EmbeddingError(f"embedding {path.stem!r} ({path.name}): {what} is not a list of vectors")
        t = t.detach().float()
        return t.unsqueeze(0) if t.ndim == 1 else t

    if not isinstance(obj, dict):
        raise EmbeddingError(f"embedding {path.stem!r} ({path.name}) is not an embedding file")
    if "string_to_param" in obj:  # A1111's own layout
        params = obj["string_to_param"]
        params = getattr(params, "_parameters", params)  # an nn.ParameterDict in older files
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"embedding {path.stem!r} ({path.name}) must hold exactly one term")
        return {"": two_d(next(iter(params.values())), "string_to_param")}
    if all(k in obj for k in SDXL_KEYS):
        out = {k: two_d(obj[k], k) for k in SDXL_KEYS}
        if out["clip_l"].shape[0] != out["clip_g"].shape[0]:
            raise EmbeddingError(f"embedding {path.stem!r}: clip_l and clip_g differ in length")
        return out
    if len(obj) == 1:  # diffusers concepts ({token: vectors}), kohya's {"emb_params": vectors}
        key, value = next(iter(obj.items()))
        return {"": two_d(value, repr(key))}
    raise EmbeddingError(
        f"embedding {path.stem!r} ({path.name}) is neither an A1111 embedding nor a single-term one "
        f"(keys: {', '.join(map(str, list(obj)[:5]))})"
    )


def read_embedding(path: Path, *, allow_pickle: bool = False) -> Embedding:
    """Load and check the embedding file at ``path`` (EmbeddingError with the reason)."""
    try:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            obj = safe_pickle.load(path, allow_pickle=allow_pickle, max_bytes=safe_pickle.MAX_EMBEDDING_BYTES)
        else:
            if path.stat().st_size > safe_pickle.MAX_EMBEDDING_BYTES:
                raise EmbeddingError(f"embedding {path.stem!r} ({path.name}) is too large to be an embedding")
            from safetensors.torch import load_file

            obj = load_file(str(path))
        data = path.read_bytes()
    except (safe_pickle.PickleRefused, safe_pickle.PickleLoadError) as exc:
        raise EmbeddingError(f"embedding {path.stem!r}: {exc}") from exc
    except EmbeddingError:
        raise
    except Exception as exc:  # safetensors' and the file system's own errors
        raise EmbeddingError(f"embedding {path.stem!r} ({path.name}) cannot be read: {exc}") from exc
    vectors = _one_term(obj, path)
    count = next(iter(vectors.values())).shape[0]
    if not 1 <= count <= MAX_VECTORS:
        raise EmbeddingError(
            f"embedding {path.stem!r} has {count} vectors; at most {MAX_VECTORS} fit a prompt"
        )
    return Embedding(path.stem, path, vectors, count, hashlib.sha256(data).hexdigest()[:12])


@dataclass
class EmbeddingLibrary:
    """The embedding files of one folder, and which are loaded into which pipeline."""

    folder: Path | None
    allow_pickle: bool = False
    _index: dict[str, Path] = field(default_factory=dict)  # lower-case name -> file
    _pattern: re.Pattern[str] | None = None
    _scanned_at: float | None = None
    _files: dict[tuple[Path, int, int], Embedding] = field(default_factory=dict)  # (file, mtime, size)
    # pipeline -> lower-case name -> the Embedding loaded into it, least recently used first
    _loaded: weakref.WeakKeyDictionary[Any, OrderedDict[str, Embedding]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _scan(self, *, fresh: bool = False) -> None:
        now = time.monotonic()
        if not fresh and self._scanned_at is not None and now - self._scanned_at < RESCAN_SECONDS:
            return
        self._scanned_at = now
        index: dict[str, Path] = {}
        for path in embedding_files(self.folder):
            if not set(path.stem) & _UNWRITABLE and path.stem.strip() == path.stem:
                index.setdefault(path.stem.lower(), path)
        names = sorted(index, key=len, reverse=True)  # the longest name first: "bad-hands" before "bad"
        alternatives = "|".join(re.escape(n) for n in names)
        pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if names else None
        with self._lock:  # whole, in one step: the runner and the request reader both read them
            self._index, self._pattern = index, pattern

    def names(self) -> list[str]:
        self._scan(fresh=True)
        return sorted((p.stem for p in self._index.values()), key=str.lower)

    def find(self, *texts: str) -> tuple[str, ...]:
        """The embeddings ``texts`` name, as file stems, in order of first use (EmbeddingError past
        :data:`MAX_PER_REQUEST`). The folder's names are at most :data:`RESCAN_SECONDS` old."""
        if self.folder is None:
            return ()
        self._scan()
        with self._lock:
            pattern, index = self._pattern, self._index
        if pattern is None:
            return ()
        found = dict.fromkeys(index[m.group(0).lower()].stem for t in texts for m in pattern.finditer(t))
        if len(found) > MAX_PER_REQUEST:
            raise EmbeddingError(
                f"a prompt may use at most {MAX_PER_REQUEST} embeddings; this one names {len(found)}"
            )
        return tuple(found)

    def get(self, name: str) -> Embedding:
        """The embedding ``name`` as its file is now (read once per file version)."""
        with self._lock:
            path = self._index.get(name.lower())
        if path is None:
            raise EmbeddingError(f"embedding {name!r} is no longer in the embeddings folder")
        try:
            stat = path.stat()
        except OSError as exc:
            raise EmbeddingError(f"embedding {name!r} cannot be read: {exc.strerror or exc}") from exc
        key = (path, stat.st_mtime_ns, stat.st_size)
        embedding = self._files.get(key)
        if embedding is None:
            embedding = read_embedding(path, allow_pickle=self.allow_pickle)
            self._files = {k: v for k, v in self._files.items() if k[0] != path} | {key: embedding}
        return embedding

    def check(self, names: Iterable[str]) -> None:
        for name in names:
            self.get(name)

    def _matches(self, names: tuple[str, ...]) -> re.Pattern[str] | None:
        if not names:
            return None
        ordered = sorted(names, key=len, reverse=True)
        return re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, ordered))})(?!\w)", re.IGNORECASE)

    def for_counting(self, text: str, names: tuple[str, ...]) -> str:
        """``text`` with each embedding name as as many one-token words as it has vectors: what it
        tokenizes to once the embedding is loaded (for counting chunks before it is)."""
        pattern = self._matches(names)
        if pattern is None:
            return text
        counts = {name.lower(): self.get(name).count for name in names}
        return pattern.sub(lambda m: " ".join(["a"] * counts[m.group(0).lower()]), text)

    def rewrite(self, text: str, names: tuple[str, ...]) -> str:
        """``text`` with each embedding name replaced by its token (what the runner encodes)."""
        pattern = self._matches(names)
        return text if pattern is None else pattern.sub(lambda m: token_for(m.group(0)), text)

    def hashes(self, names: tuple[str, ...]) -> str | None:
        """A1111's ``TI hashes`` value (``name: hash, ...``, the first 12 hex digits of each file's
        SHA-256); None without embeddings."""
        if not names:
            return None
        return ", ".join(f"{n.replace(':', '').replace(',', '')}: {self.get(n).short_hash}" for n in names)

    # ------------------------------------------------------------------------------------ pipelines

    def apply(self, pipe: Any, jobs: Iterable[Job]) -> dict[Job, str]:
        """Load into ``pipe`` every embedding ``jobs`` name; the jobs whose embeddings cannot be used, with
        the reason (the others go on without them)."""
        failed: dict[Job, str] = {}
        wanted = {name.lower() for job in jobs for name in job.embeddings}
        for job in dict.fromkeys(jobs):
            try:
                for name in job.embeddings:
                    self._ensure(pipe, name, keep=wanted)
            except EmbeddingError as exc:
                failed[job] = str(exc)
        return failed

    def _ensure(self, pipe: Any, name: str, keep: set[str]) -> None:
        embedding = self.get(name)
        loaded = self._loaded.setdefault(pipe, OrderedDict())
        current = loaded.get(name.lower())
        if current is embedding:  # one object per file version (get)
            loaded.move_to_end(name.lower())
            return
        if current is not None:  # the file changed: its old vectors go
            self._unload(pipe, loaded, name.lower())
        targets = self._targets(pipe, embedding)
        while len(loaded) >= MAX_LOADED:
            oldest = next((n for n in loaded if n not in keep), None)
            if oldest is None:
                break
            self._unload(pipe, loaded, oldest)
        token = token_for(name)
        try:
            for tokenizer, encoder, vectors in targets:
                pipe.load_textual_inversion(
                    {token: vectors}, token=token, tokenizer=tokenizer, text_encoder=encoder
                )
        except Exception as exc:
            raise EmbeddingError(f"could not load embedding {name!r}: {exc}") from exc
        loaded[name.lower()] = embedding
        log.info("loaded embedding %s (%d vectors)", embedding.path.name, embedding.count)

    def _targets(self, pipe: Any, embedding: Embedding) -> list[tuple[Any, Any, Any]]:
        """(tokenizer, text encoder, vectors) for each text encoder of ``pipe``; EmbeddingError when the
        embedding was made for another kind of model."""
        encoders = _encoders(pipe)
        if (len(encoders) == 2) != embedding.sdxl:
            made, this = ("SDXL", "SD 1.x/2.x") if embedding.sdxl else ("SD 1.x/2.x", "SDXL")
            raise EmbeddingError(
                f"embedding {embedding.name!r} is made for {made} models; this model is {this}"
            )
        keys = SDXL_KEYS if embedding.sdxl else ("",)
        out = []
        for (tokenizer, encoder), key in zip(encoders, keys, strict=True):
            vectors = embedding.vectors[key]
            width = encoder.get_input_embeddings().weight.shape[1]
            if vectors.shape[1] != width:
                raise EmbeddingError(
                    f"embedding {embedding.name!r} is made for another kind of model (its vectors are "
                    f"{vectors.shape[1]} wide, this model's text encoder takes {width})"
                )
            out.append((tokenizer, encoder, vectors))
        return out

    def _unload(self, pipe: Any, loaded: OrderedDict[str, Embedding], name: str) -> None:
        embedding = loaded.pop(name)
        token = token_for(name)
        tokens = [token] + [f"{token}_{i}" for i in range(1, embedding.count)]
        for tokenizer, encoder in _encoders(pipe):
            pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=encoder)
        log.info("unloaded embedding %s", embedding.path.name)


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of ``pipe``: one for SD 1.x/2.x, two for SDXL."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


__all__ = ["EMBEDDING_SUFFIXES", "Embedding", "EmbeddingError", "EmbeddingLibrary", "default_folder"]
