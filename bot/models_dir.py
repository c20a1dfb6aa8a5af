"""The checkpoints users may pick by name: files and diffusers folders in MODELS_DIR."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt",)


def available_models(models_dir: Path | None, *, allow_pickle: bool = False) -> list[str]:
    """Names (file stems, folder names) of the models in ``models_dir``, sorted; [] when unset."""
    if models_dir is None or not models_dir.is_dir():
        return []
    suffixes = CHECKPOINT_SUFFIXES + (PICKLE_SUFFIXES if allow_pickle else ())
    names = set()
    for entry in models_dir.iterdir():
        if entry.is_file() and entry.suffix.lower() in suffixes:
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "model_index.json").is_file():
            names.add(entry.name)
    return sorted(names, key=str.lower)
