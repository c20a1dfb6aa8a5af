"""A1111 sampler names, torch-free so the bot can offer them as slash-command choices."""

from __future__ import annotations

DEFAULT_SAMPLER = "DPM++ 2M Karras"

SAMPLER_NAMES: tuple[str, ...] = (
    "DPM++ 2M Karras",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DPM2",
    "DPM2 Karras",
    "DPM2 a",
    "DPM2 a Karras",
    "Euler",
    "Euler a",
    "Heun",
    "LMS",
    "LMS Karras",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)
