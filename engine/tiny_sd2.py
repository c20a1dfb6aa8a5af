"""A tiny random-weight SD 2.x pipeline, built locally and seeded, for tests of the SD 2.x path: an
OpenCLIP-style text encoder 1024 wide (SD 2.x's width, which is how a loaded pipeline is told from SD 1.x;
one layer over the tiny vocabulary keeps it at a few million weights), its tokenizer padded with ``!``, and
a scheduler config that says epsilon, so that a test sees the v-prediction the engine gives SD 2.x single
files come from the engine, not from the config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from engine.sdxl import OPENCLIP_PAD
from engine.tiny import (
    SCHEDULER_CONFIG,
    tiny_text_config,
    tiny_unet_config,
    tiny_vae_config,
    tiny_vocab_and_merges,
    write_tokenizer,
)

SD2_WIDTH = 1024


def build_tiny_sd2_pipeline(seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, _ = tiny_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(tmp) / "tok", pad_token=OPENCLIP_PAD))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **{**tiny_unet_config(), "cross_attention_dim": SD2_WIDTH, "use_linear_projection": True}
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 2)
    text = {
        **tiny_text_config(vocab),
        "hidden_size": SD2_WIDTH,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
    }
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**text, "num_attention_heads": 4, "hidden_act": "gelu"}))
    schedule = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler.from_config({**schedule, "prediction_type": "epsilon"}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sd2(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny SD 2.x as a diffusers folder. Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_sd2_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path
