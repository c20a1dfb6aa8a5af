"""The Stable Diffusion safety checker, run only for requests that ask for it (``safety_check``: the bot
sets it for channels not marked NSFW) and only when a local checker folder is configured
(``--safety-checker DIR``: a ``StableDiffusionSafetyChecker`` plus its ``CLIPImageProcessor``, either at
the folder's root like ``CompVis/stable-diffusion-safety-checker`` or in ``safety_checker/`` and
``feature_extractor/`` sub-folders like an SD pipeline repository). A flagged image is replaced by a black
one and marked ``nsfw``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


class SafetyChecker:
    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        path = Path(path)
        model_dir = path / "safety_checker" if (path / "safety_checker").is_dir() else path
        proc_dir = path / "feature_extractor" if (path / "feature_extractor").is_dir() else path
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no safety checker (config.json) in {path}")
        self.model: Any = StableDiffusionSafetyChecker.from_pretrained(
            model_dir, torch_dtype=dtype, local_files_only=True
        )
        self.model.to(device).eval()
        self.processor: Any = CLIPImageProcessor.from_pretrained(proc_dir, local_files_only=True)
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def check(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """``images`` with flagged ones blacked out, and the flags."""
        if not images:
            return images, []
        clip_input = self.processor(images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        arrays = [np.asarray(img, dtype=np.float32) / 255.0 for img in images]
        _, flags = self.model(clip_input=clip_input, images=arrays)
        flags = [bool(f) for f in flags]
        out = [Image.new("RGB", img.size) if flag else img for img, flag in zip(images, flags, strict=True)]
        return out, flags


def make_tiny_safety_checker(path: str | Path, *, flag_everything: bool, seed: int = 0) -> Path:
    """A tiny random-weight checker for tests: it flags every image, or none (its concept thresholds)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    path = Path(path)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 100,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = StableDiffusionSafetyChecker(config).eval()
    threshold = -10.0 if flag_everything else 10.0
    with torch.no_grad():
        model.concept_embeds.normal_()
        model.special_care_embeds.normal_()
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(10.0)
    model.save_pretrained(path, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path
