"""Cheap preview images of a running job: a linear latent -> RGB approximation (no VAE), or TAESD when a
local tiny autoencoder folder is configured. A preview costs well under a millisecond of GPU time for the
linear path; the image is encoded small (WebP, PNG where Pillow lacks WebP)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, features

from engine.families import Family

# SD 1.x latent channels -> RGB (rows: the 4 latent channels), on the scaled latents the sampler works on.
SD15_LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.0184, -0.0891),
)

# SDXL's latent space is another one (factors and bias as ComfyUI's latent_formats.SDXL).
SDXL_LATENT_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)
_LINEAR: dict[Family, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    Family.SD1: (SD15_LATENT_RGB_FACTORS, (0.0, 0.0, 0.0)),
    Family.SD2: (SD15_LATENT_RGB_FACTORS, (0.0, 0.0, 0.0)),  # SD 2.x kept SD 1.x's VAE
    Family.SDXL: (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS),
}

PREVIEW_MAX_SIDE = 256
PREVIEW_UPSCALE = 2  # a latent-resolution image (1/8 of the picture) shown at 2x: 128 px for 512
_HAS_WEBP = features.check("webp")


def latents_to_rgb(latent: torch.Tensor, family: Family = Family.SD1) -> Image.Image:
    """One latent ``[4, h, w]`` -> an ``h x w`` RGB image through ``family``'s linear approximation."""
    table, bias = _LINEAR[family]
    factors = torch.tensor(table, dtype=torch.float32, device=latent.device)
    rgb = torch.tensordot(latent.float(), factors, dims=([0], [0]))  # [h, w, 3]; einsum is slower on CPUs
    if any(bias):
        rgb = rgb + torch.tensor(bias, dtype=torch.float32, device=latent.device)
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(rgb, "RGB")


def encode_preview(image: Image.Image, max_side: int = PREVIEW_MAX_SIDE, upscale: float = 1.0) -> bytes:
    """A small WebP (or PNG) of ``image`` scaled by ``upscale``, its longest side at most ``max_side``."""
    scale = min(upscale, max_side / max(image.size))
    if scale != 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if _HAS_WEBP:
        image.save(buf, format="WEBP", quality=70, method=0)
    else:
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Previewer:
    """Turns a latent into preview bytes; uses TAESD (``AutoencoderTiny``) when ``taesd`` names a folder
    (TAESDXL for an SDXL ``family``: the same architecture, trained on SDXL's latents)."""

    def __init__(
        self,
        taesd: str | os.PathLike[str] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        family: Family = Family.SD1,
    ) -> None:
        self.family = family
        self.taesd: Any = None
        if taesd is not None:
            from diffusers import AutoencoderTiny

            path = Path(taesd)
            if not path.is_dir():
                raise FileNotFoundError(f"TAESD folder {path} does not exist")
            self.taesd = AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
            self.taesd.to(device or torch.device("cpu")).eval()

    @property
    def kind(self) -> str:
        return "taesd" if self.taesd is not None else "linear"

    @torch.no_grad()
    def image(self, latent: torch.Tensor) -> Image.Image:
        if self.taesd is None:
            return latents_to_rgb(latent, self.family)
        param = next(self.taesd.parameters())
        decoded = self.taesd.decode(latent[None].to(param.device, param.dtype)).sample[0]
        rgb = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy(), "RGB")

    def preview(self, latent: torch.Tensor) -> bytes:
        """Encoded preview: about 1 ms for a 512x512 picture with the linear path."""
        return encode_preview(self.image(latent), upscale=1.0 if self.taesd is not None else PREVIEW_UPSCALE)
