"""Fuzz-suite settings and fixtures.

One Hypothesis profile for every property here: derandomized (the same examples on every run and machine,
so CI is deterministic and a failure reproduces), no example database (nothing written between runs), no
per-example deadline (2 shared CI cores make timings noise). ``HYPOTHESIS_PROFILE=fuzz-long`` runs many
more examples, with fresh randomness, for a local bug hunt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-long",
    parent=settings.get_profile("fuzz"),
    max_examples=5000,
    derandomize=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SD 1.x's own CLIP tokenizer (the vocabulary ships in engine/data), as the engine loads it."""
    from transformers import CLIPTokenizer

    from engine.sd15 import write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer"))


@pytest.fixture(scope="session")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA folder with two names a prompt may use (the check only looks the files up)."""
    folder = tmp_path_factory.mktemp("loras")
    for name in ("ink", "Film Grain"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    return folder
