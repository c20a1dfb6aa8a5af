"""A tiny random-weight SDXL pipeline, built locally and seeded (no download), for tests.

The same code path as SDXL base (a UNet with SDXL's "text_time" size/crop conditioning, two CLIP text
encoders whose hidden states are concatenated, the second with a projection for the pooled embedding, a VAE
with SDXL's scaling factor, both tokenizers with their own padding) at toy size: the text encoders are 32 and
64 wide (so that the UNet's context is 96 wide, unlike the tiny SD 1.x's 32), and the native size is 64x64
(an 8x8 latent), written to the folder's sidecar ``DIR.json`` for the engine's per-model defaults.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from engine.sdxl import OPENCLIP_PAD, SDXL_SCHEDULER_CONFIG
from engine.tiny import tiny_text_config, tiny_vae_config, tiny_vocab_and_merges, write_tokenizer

TINY_SDXL_NATIVE = 64
TIME_EMBED_DIM = 8
TEXT_2_WIDTH = 64


def tiny_sdxl_unet_config() -> dict[str, Any]:
    return {
        "sample_size": TINY_SDXL_NATIVE // 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        # SDXL's layout: no attention at the highest resolution.
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32 + TEXT_2_WIDTH,
        "attention_head_dim": (2, 4),
        "transformer_layers_per_block": (1, 1),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        # The pooled text embedding, then original size, crop and target size (6 numbers) embedded.
        "projection_class_embeddings_input_dim": TEXT_2_WIDTH + 6 * TIME_EMBED_DIM,
        "norm_num_groups": 8,
    }


def tiny_text_2_config(vocab: dict[str, int]) -> dict[str, Any]:
    return {
        **tiny_text_config(vocab),
        "hidden_size": TEXT_2_WIDTH,
        "intermediate_size": 2 * TEXT_2_WIDTH,
        "projection_dim": TEXT_2_WIDTH,
        "hidden_act": "gelu",  # OpenCLIP's
        "pad_token_id": 0,
    }


def build_tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """The tiny StableDiffusionXLPipeline in memory (random weights, deterministic for a given seed)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab, _ = tiny_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(tmp) / "tokenizer"))
        tokenizer_2 = CLIPTokenizer.from_pretrained(
            write_tokenizer(Path(tmp) / "tokenizer_2", pad_token=OPENCLIP_PAD)
        )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**{**tiny_vae_config(), "sample_size": TINY_SDXL_NATIVE, "scaling_factor": 0.13025})
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_2_config(vocab)))
    config = {k: v for k, v in SDXL_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(config),
    )


def write_tiny_sidecar(model: Path) -> Path:
    """The per-model defaults of a tiny SDXL (engine/families.py): native 64x64, few steps."""
    from engine.families import sidecar_path

    side = sidecar_path(model)
    side.write_text(json.dumps({"native_size": TINY_SDXL_NATIVE, "steps": 4}) + "\n", encoding="utf-8")
    return side


def make_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny SDXL as a diffusers folder (loads offline with ``from_pretrained``), and its sidecar
    ``DIR.json`` beside it. Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_sdxl_pipeline(seed).save_pretrained(path, safe_serialization=True)
    write_tiny_sidecar(path)
    return path


def make_tiny_sdxl_lora(path: str | Path, seed: int = 0) -> Path:
    """A LoRA ``.safetensors`` for the tiny SDXL (random low-rank weights on the UNet's attention, in
    diffusers' format), for exercising ``<lora:name:weight>`` on SDXL. Returns the file."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    path = Path(path)
    unet = build_tiny_sdxl_pipeline(seed).unet
    torch.manual_seed(seed + 1)
    # init_lora_weights=False: random B matrices; peft's default zeros would make a LoRA that does nothing.
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"])
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path
