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


def model_paths(models_dir: str | Path | None, *, allow_pickle: bool = False) -> dict[str, Path]:
    """Each model of ``models_dir`` by its name (file stem, diffusers folder name), sorted case-blind; {}
    when unset or missing. Of two files with one stem the safe one (``.safetensors``) is listed."""
    if models_dir is None or not Path(models_dir).is_dir():
        return {}
    wanted = suffixes(allow_pickle=allow_pickle)
    found: dict[str, Path] = {}
    for entry in sorted(Path(models_dir).iterdir(), key=lambda p: p.suffix.lower() not in SAFE_SUFFIXES):
        if entry.is_file() and entry.suffix.lower() in wanted:
            found.setdefault(entry.stem, entry)
        elif is_diffusers_folder(entry):
            found.setdefault(entry.name, entry)
    return {name: found[name] for name in sorted(found, key=str.lower)}


def list_models(models_dir: str | Path | None, *, allow_pickle: bool = False) -> list[str]:
    """Names (file stems, diffusers folder names) of the models in ``models_dir``, sorted case-blind;
    [] when unset or missing."""
    return list(model_paths(models_dir, allow_pickle=allow_pickle))
