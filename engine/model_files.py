"""Which files are models and LoRAs, and the names members pick them by. Torch-free, so the bot lists
exactly what the engine would load (one list of suffixes for both sides).

Pickled checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) are listed like the others: they load through
torch's weights-only unpickler (engine/safe_pickle.py), which runs none of their code.
"""

from __future__ import annotations

from pathlib import Path

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ALL_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def model_paths(models_dir: str | Path | None) -> dict[str, Path]:
    """Each model of ``models_dir`` by its name (file stem, diffusers folder name), sorted case-blind; {}
    when unset or missing. Of two files with one stem the safe one (``.safetensors``) is listed."""
    if models_dir is None or not Path(models_dir).is_dir():
        return {}
    found: dict[str, Path] = {}
    for entry in sorted(Path(models_dir).iterdir(), key=lambda p: p.suffix.lower() not in SAFE_SUFFIXES):
        if entry.is_file() and entry.suffix.lower() in ALL_SUFFIXES:
            found.setdefault(entry.stem, entry)
        elif is_diffusers_folder(entry):
            found.setdefault(entry.name, entry)
    return {name: found[name] for name in sorted(found, key=str.lower)}


def list_models(models_dir: str | Path | None) -> list[str]:
    """Names (file stems, diffusers folder names) of the models in ``models_dir``, sorted case-blind;
    [] when unset or missing."""
    return list(model_paths(models_dir))


# Textual-inversion embeddings as A1111 reads them (its image-embedded .png/.webp ones are not read here).
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def embedding_files(folder: str | Path | None) -> list[Path]:
    """The embedding files of ``folder`` and its subfolders (A1111 walks them too), sorted; [] when unset
    or missing. Of two files with one name, the ``.safetensors`` one comes first."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = [p for p in Path(folder).rglob("*") if p.suffix.lower() in EMBEDDING_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: (p.stem.lower(), p.suffix.lower() not in SAFE_SUFFIXES, str(p)))


def list_embeddings(folder: str | Path | None) -> list[str]:
    """Names of the embeddings in ``folder`` (file stems, each once), sorted case-blind."""
    return sorted({p.stem for p in embedding_files(folder)}, key=str.lower)
