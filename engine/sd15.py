"""The Stable Diffusion 1.5 architecture, built locally: configs, the CLIP tokenizer, random weights.

- :func:`write_sd15_config` writes a diffusers folder with SD 1.5's configs and the real CLIP BPE
  tokenizer but no weights: the local config that ``from_single_file`` needs to load A1111-style
  checkpoints offline (see :func:`engine.loading.default_single_file_config`).
- :func:`make_sd15_random` writes the full-size pipeline (860M-parameter UNet, CLIP ViT-L/14 text
  encoder, VAE) with seeded random weights: the same FLOPs as the real model, for benchmarks without a
  download.

The tokenizer comes from ``engine/data/clip_bpe_simple_vocab_16e6.txt.gz``, the BPE merges file that
OpenAI's CLIP (MIT license) ships; vocab.json and merges.txt are derived from it exactly as CLIP's
``SimpleTokenizer`` does, which gives the same ids as the tokenizer of the SD 1.5 repositories.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.tiny import SCHEDULER_CONFIG, _bytes_to_unicode, write_tokenizer

BPE_FILE = Path(__file__).with_name("data") / "clip_bpe_simple_vocab_16e6.txt.gz"
CONFIG_VERSION = "1"

UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's 49408-token vocabulary and its merges, derived as CLIP's ``SimpleTokenizer`` does."""
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(path: Path) -> Path:
    """SD 1.5's CLIP tokenizer folder, from the vocabulary this package ships."""
    return write_tokenizer(path, vocab_and_merges=clip_vocab_and_merges())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_sd15_config(path: str | Path) -> Path:
    """A diffusers SD 1.5 folder without weights: model_index, component configs, the CLIP tokenizer."""
    path = Path(path)
    _write_json(path / "model_index.json", MODEL_INDEX)
    _write_json(path / "unet" / "config.json", UNET_CONFIG)
    _write_json(path / "vae" / "config.json", VAE_CONFIG)
    _write_json(path / "text_encoder" / "config.json", TEXT_ENCODER_CONFIG)
    _write_json(path / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_clip_tokenizer(path / "tokenizer")
    return path


def cache_dir() -> Path:
    base = os.environ.get("ENGINE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "imaginebot" if base else Path.home() / ".cache" / "imaginebot"


def cached_folder(name: str, write: Callable[[Path], Path]) -> Path:
    """``cache_dir()/name``, written once by ``write`` (into a temporary folder renamed into place, so a
    crash or a second process never leaves half a folder) and reused."""
    target = cache_dir() / name
    if (target / "model_index.json").is_file() and (target / "tokenizer" / "vocab.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def sd15_config_dir() -> Path:
    """The SD 1.5 config folder, written once into the cache directory (atomically) and reused."""
    return cached_folder(f"sd15-config-v{CONFIG_VERSION}", write_sd15_config)


def build_sd15_models(device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """The UNet, VAE and text encoder of SD 1.5 with random weights (``device="meta"``: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def cfg(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not k.startswith("_") and k != "architectures"}

    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg(UNET_CONFIG))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg(VAE_CONFIG))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg(TEXT_ENCODER_CONFIG)))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval()}


def make_sd15_random(path: str | Path, seed: int = 0, dtype: str = "fp16") -> Path:
    """Write the full-size SD 1.5 pipeline with random weights (about 2 GB in fp16)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    path = Path(path)
    models = build_sd15_models("cpu", seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp) / "tokenizer"))
    pipe = StableDiffusionPipeline(
        **models,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if dtype == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
