"""bench.engine's workload prompt and the torch device helpers (lazy torch: ``--help`` stays fast)."""

from __future__ import annotations

import gc
from typing import Any

PROMPT = "a lighthouse on a cliff at sunset, oil painting, detailed"
NEGATIVE = "blurry, lowres"


def torch_module() -> Any:
    import torch

    return torch


def reset_peak(device: Any) -> None:
    torch = torch_module()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> dict[str, float | None]:
    torch = torch_module()
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 1024**3, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 1024**3, 3),
    }


def free_memory(device: Any) -> None:
    torch = torch_module()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
