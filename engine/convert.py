"""``python -m engine convert FILE.ckpt FILE.safetensors``: a pickled checkpoint, LoRA or embedding as a
``.safetensors`` file, read through the safe unpickler (engine/safe_pickle.py).

What is written: the tensors of the file's state dict (inside any ``state_dict`` wrapper, as diffusers and
A1111 read them), or an A1111 embedding's vectors under ``emb_params`` (A1111's own ``.safetensors``
embedding layout). Tensors that share memory (tied weights) are written as copies, since safetensors
stores each tensor on its own. The file appears whole or not at all (written beside, then renamed), and an
existing one is replaced only with ``force``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine import safe_pickle
from engine.model_files import PICKLE_SUFFIXES, SAFE_SUFFIXES


class ConvertError(ValueError):
    """The conversion cannot be done as asked; the message says why."""


def tensors_of(obj: Any) -> dict[str, Any]:
    """The tensors to write for a loaded pickle: an A1111 embedding's vectors, else its state dict."""
    import torch

    if isinstance(obj, dict) and isinstance(obj.get("string_to_param"), dict):
        vectors = next(iter(obj["string_to_param"].values()), None)
        if isinstance(vectors, torch.Tensor):
            return {"emb_params": vectors}
    return safe_pickle.state_dict(obj)


def save_tensors(tensors: dict[str, Any], dest: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``dest`` atomically; shared or non-contiguous tensors are copied first."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        shared = key in seen and storage.nbytes() > 0
        seen.add(key)
        out[name] = tensor.detach().clone() if shared or not tensor.is_contiguous() else tensor.detach()
    part = dest.with_name(f".{dest.name}.part")
    try:
        save_file(out, str(part), metadata=metadata or {"format": "pt"})
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def convert(source: Path, dest: Path, *, force: bool = False, allow_pickle: bool = False) -> int:
    """Convert ``source`` (a pickle) to ``dest`` (``.safetensors``); the number of tensors written.

    Raises :class:`ConvertError`, :class:`engine.safe_pickle.PickleRefused` or
    :class:`engine.safe_pickle.PickleLoadError`, each with a one-line reason."""
    if not source.is_file():
        raise ConvertError(f"{source} is not a file")
    if source.suffix.lower() not in PICKLE_SUFFIXES:
        raise ConvertError(f"{source.name} is not a pickle checkpoint ({', '.join(PICKLE_SUFFIXES)})")
    if dest.suffix.lower() not in SAFE_SUFFIXES:
        raise ConvertError(f"the output must be a .safetensors file, not {dest.name}")
    if dest.exists() and not force:
        raise ConvertError(f"{dest} exists; pass --force to replace it")
    if not dest.parent.is_dir():
        raise ConvertError(f"{dest.parent} is not a folder")
    tensors = tensors_of(safe_pickle.load(source, allow_pickle=allow_pickle))
    if not tensors:
        raise ConvertError(f"{source.name} holds no tensors to convert")
    save_tensors(tensors, dest)
    return len(tensors)


@contextmanager
def loadable_path(path: Path, allow_pickle: bool) -> Iterator[Path]:
    """A path diffusers' ``from_single_file`` may read for the checkpoint at ``path``.

    ``.safetensors`` files are themselves. A pickle is first read with the safe unpickler: when that works,
    it is itself too, read by diffusers inside :func:`engine.safe_pickle.allowed_globals` (diffusers loads
    pickles with torch's ``weights_only`` unpickler as well). One that needs the full unpickler is refused
    (:class:`engine.safe_pickle.PickleRefused`), or with ``allow_pickle`` unpickled and handed over as a
    temporary ``.safetensors`` file, removed afterwards."""
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        yield path
        return
    try:
        safe_pickle.load(path)
    except safe_pickle.PickleRefused:
        if not allow_pickle:
            raise
    else:
        with safe_pickle.allowed_globals():
            yield path
        return
    tensors = tensors_of(safe_pickle.load(path, allow_pickle=True))
    with tempfile.TemporaryDirectory(prefix="imaginebot-convert-") as tmp:
        readable = Path(tmp) / f"{path.stem}.safetensors"
        save_tensors(tensors, readable)
        del tensors
        yield readable
