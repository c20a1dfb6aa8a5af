"""Header-only ``.safetensors`` files: a checkpoint's tensor names without its weights, enough for
engine/families.py to tell the family (it reads only the header) and far too little for a worker to load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

# One tensor name that marks each family's single-file layout (its text encoder's).
FAMILY_KEYS = {
    "sd1": "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "sd2": "cond_stage_model.model.token_embedding.weight",
    "sdxl": "conditioner.embedders.1.model.token_embedding.weight",
}


def write_header_only(path: Path, family: str) -> Path:
    header = json.dumps({FAMILY_KEYS[family]: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0\0")
    return path
