"""The SDXL and SD 2.x architectures, built locally: diffusers config folders (no weights) for loading
single-file checkpoints offline, and SDXL with random weights for benchmarks.

The configs are those of ``stabilityai/stable-diffusion-xl-base-1.0`` and ``stabilityai/stable-diffusion-2-1``
as diffusers publishes them, written out here so that ``from_single_file(..., config=folder)`` never asks
the hub. Their tokenizers use the CLIP BPE vocabulary the engine ships (engine/sd15.py): OpenCLIP's
tokenizer (SD 2.x, SDXL's second) is the same vocabulary, padded with ``!`` (id 0) instead of the end token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from engine.sd15 import MODEL_INDEX as SD1_MODEL_INDEX
from engine.sd15 import TEXT_ENCODER_CONFIG as CLIP_L_CONFIG
from engine.sd15 import UNET_CONFIG as SD1_UNET_CONFIG
from engine.sd15 import VAE_CONFIG as SD_VAE_CONFIG
from engine.sd15 import _write_json, cached_folder, clip_vocab_and_merges
from engine.tiny import write_tokenizer

CONFIG_VERSION = "1"
OPENCLIP_PAD = "!"

# The noise schedule all three families were trained with (SD 1.x's scaled_linear betas); only the
# prediction type differs (SD 2.x 768-v: v_prediction). The engine swaps in the requested sampler.
_BASE_SCHEDULE: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    **_BASE_SCHEDULE,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
SD2_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    **_BASE_SCHEDULE,
    "prediction_type": "v_prediction",
}

SDXL_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # pooled 1280 + 6 size/crop numbers x 256
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE_CONFIG: dict[str, Any] = {
    **SD_VAE_CONFIG,
    "force_upcast": True,  # SDXL's VAE overflows in fp16 (a fixed fp16 VAE is a sidecar-free swap away)
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}
# OpenCLIP ViT-bigG/14 as transformers' CLIPTextModelWithProjection.
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **CLIP_L_CONFIG,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
SDXL_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# SD 1.5's UNet with a 1024-wide text context, per-level head counts (64 channels each), linear projections
# and 768² latents.
SD2_UNET_CONFIG: dict[str, Any] = {
    **SD1_UNET_CONFIG,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "sample_size": 96,
    "upcast_attention": True,  # 2.1's fp16 attention overflows without it
    "use_linear_projection": True,
}
# OpenCLIP ViT-H/14 without its last layer: SD 2.x reads the penultimate layer, and diffusers' conversion
# drops layer 23.
SD2_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **CLIP_L_CONFIG,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}
SD2_MODEL_INDEX: dict[str, Any] = {**SD1_MODEL_INDEX, "scheduler": ["diffusers", "DDIMScheduler"]}


def write_sdxl_config(path: str | Path) -> Path:
    """A diffusers SDXL base folder without weights: model_index, component configs, both tokenizers."""
    path = Path(path)
    vocab = clip_vocab_and_merges()
    _write_json(path / "model_index.json", SDXL_MODEL_INDEX)
    _write_json(path / "unet" / "config.json", SDXL_UNET_CONFIG)
    _write_json(path / "vae" / "config.json", SDXL_VAE_CONFIG)
    _write_json(path / "text_encoder" / "config.json", CLIP_L_CONFIG)
    _write_json(path / "text_encoder_2" / "config.json", SDXL_TEXT_ENCODER_2_CONFIG)
    _write_json(path / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER_CONFIG)
    write_tokenizer(path / "tokenizer", vocab_and_merges=vocab)
    write_tokenizer(path / "tokenizer_2", vocab_and_merges=vocab, pad_token=OPENCLIP_PAD)
    return path


def write_sd2_config(path: str | Path) -> Path:
    """A diffusers SD 2.1 (768, v-prediction) folder without weights."""
    path = Path(path)
    _write_json(path / "model_index.json", SD2_MODEL_INDEX)
    _write_json(path / "unet" / "config.json", SD2_UNET_CONFIG)
    _write_json(path / "vae" / "config.json", {**SD_VAE_CONFIG, "sample_size": 768})
    _write_json(path / "text_encoder" / "config.json", SD2_TEXT_ENCODER_CONFIG)
    _write_json(path / "scheduler" / "scheduler_config.json", SD2_SCHEDULER_CONFIG)
    write_tokenizer(path / "tokenizer", vocab_and_merges=clip_vocab_and_merges(), pad_token=OPENCLIP_PAD)
    return path


def sdxl_config_dir() -> Path:
    return cached_folder(f"sdxl-config-v{CONFIG_VERSION}", write_sdxl_config)


def sd2_config_dir() -> Path:
    return cached_folder(f"sd2-config-v{CONFIG_VERSION}", write_sd2_config)


def _cfg(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "architectures"}


def build_sdxl_models(device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """SDXL's UNet, VAE and both text encoders with random weights (``device="meta"``: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_cfg(SDXL_UNET_CONFIG))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**_cfg(SDXL_VAE_CONFIG))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**_cfg(CLIP_L_CONFIG)))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_cfg(SDXL_TEXT_ENCODER_2_CONFIG)))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
    }


def make_sdxl_random(path: str | Path, seed: int = 0, dtype: str = "fp16") -> Path:
    """Write the full-size SDXL base pipeline with random weights (about 7 GB in fp16; it is built in fp32
    first, so it needs about 14 GB of RAM)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    path = Path(path)
    models = build_sdxl_models("cpu", seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_sdxl_config(Path(tmp) / "config")
        tokenizer = CLIPTokenizer.from_pretrained(config / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(config / "tokenizer_2")
    pipe = StableDiffusionXLPipeline(
        **models,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
    )
    if dtype == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
