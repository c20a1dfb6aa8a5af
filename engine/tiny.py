"""A tiny random-weight Stable Diffusion 1.x pipeline, built locally and seeded (no download).

Same code path as real SD 1.5 weights (UNet2DConditionModel, AutoencoderKL with a VAE scale factor of 8,
CLIP text encoder and BPE tokenizer, the SD 1.5 scheduler config), but small enough that a 512x512,
4-image, 4-step run takes a few seconds on a laptop CPU. The images are noise: it exists for tests and
for exercising the bot end to end without weights.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

# A few common prompt words become single BPE tokens; everything else falls back to byte-level pieces.
_WORDS = (
    "a an the of and in on at with by for to from photo painting portrait of cat dog man woman girl boy "
    "city forest mountain sea ocean sky sunset night light dark red blue green yellow white black "
    "oil digital art style detailed high quality best lowres blurry ugly bad anatomy hands face eyes "
    "lighthouse cliff castle dragon robot space ship car house tree flower river lake snow rain fire "
    "water cyberpunk fantasy anime realistic cinematic lighting beautiful landscape close up wide angle"
).split()

SCHEDULER_CONFIG: dict[str, Any] = {
    # The scheduler config SD 1.5 ships with (the engine swaps in the requested sampler per batch).
    "_class_name": "PNDMScheduler",
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


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (what the byte-level pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: every byte (plain and word-final), merges for a few words, specials."""
    chars = list(_bytes_to_unicode().values())
    tokens: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    seen = set(tokens)
    for word in dict.fromkeys(_WORDS):
        pieces = [*list(word[:-1]), word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            current += piece
            if current not in seen:
                seen.add(current)
                tokens.append(current)
                merges.append(merge)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer(
    path: Path,
    *,
    model_max_length: int = 77,
    vocab_and_merges: tuple[dict[str, int], list[str]] | None = None,
    pad_token: str = "<|endoftext|>",
) -> Path:
    """Write a loadable CLIPTokenizer folder (vocab.json, merges.txt, configs) from ``vocab_and_merges``
    (default: the tiny vocab; engine/sd15.py passes CLIP's own). ``pad_token``: OpenCLIP's tokenizers
    (SD 2.x, SDXL's second) pad with ``!`` (id 0), OpenAI CLIP's with ``<|endoftext|>``."""
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges or tiny_vocab_and_merges()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (path / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def tiny_unet_config() -> dict[str, Any]:
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        # Attention only at the lower resolution keeps a 512x512 image (64x64 latent) cheap on a CPU.
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,  # diffusers' legacy name: the number of heads, as in SD 1.5's config
        "norm_num_groups": 8,
    }


def tiny_vae_config() -> dict[str, Any]:
    return {
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        # Four levels: a VAE scale factor of 8, like SD 1.5 (512x512 image <-> 64x64 latent).
        "block_out_channels": (8, 16, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "scaling_factor": 0.18215,
    }


def tiny_text_config(vocab: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "hidden_act": "quick_gelu",
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny StableDiffusionPipeline in memory (random weights, deterministic for a given seed)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, _ = tiny_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(tmp) / "tokenizer"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab)))
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads
    offline. Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_taesd(path: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight TAESD (``AutoencoderTiny``) folder, for exercising ``--taesd`` previews."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_lora(path: str | Path, seed: int = 0) -> Path:
    """A LoRA ``.safetensors`` file for the tiny model (random low-rank weights on the UNet's attention
    projections, saved in diffusers' format), for exercising ``<lora:name:weight>``. Returns the file."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    path = Path(path)
    unet = build_tiny_pipeline(seed).unet
    torch.manual_seed(seed + 1)
    # init_lora_weights=False: random B matrices; peft's default zeros would make a LoRA that does nothing.
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"])
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path
