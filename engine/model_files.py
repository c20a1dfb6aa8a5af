"""Which files are models and LoRAs, and the names members pick them by. Torch-free, so the bot lists
exactly what the engine would load (one list of suffixes for both sides).

Pickled checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) run code when loaded: they are listed and
loaded only when ALLOW_PICKLE_CHECKPOINTS is on.
"""

from __future__ import annotations

from pathlib import Path

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ALL_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES


def suffixes(*, allow_pickle: bool) -> tuple[str, ...]:
    return ALL_SUFFIXES if allow_pickle else SAFE_SUFFIXES


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def list_models(models_dir: str | Path | None, *, allow_pickle: bool = False) -> list[str]:
    """Names (file stems, diffusers folder names) of the models in ``models_dir``, sorted case-blind;
    [] when unset or missing."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    wanted = suffixes(allow_pickle=allow_pickle)
    names = set()
    for entry in Path(models_dir).iterdir():
        if entry.is_file() and entry.suffix.lower() in wanted:
            names.add(entry.stem)
        elif is_diffusers_folder(entry):
            names.add(entry.name)
    return sorted(names, key=str.lower)
