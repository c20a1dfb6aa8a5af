"""bench.engine's baseline: a plain diffusers pipeline, as most bots run Stable Diffusion."""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

from bench._engine_common import NEGATIVE, PROMPT, free_memory, peak_memory, reset_peak, torch_module


def run_baseline(args: argparse.Namespace, device: Any, dtype: Any, n: int) -> dict[str, Any]:
    """A plain diffusers pipeline, one request (one image) at a time, PNG-encoded before the next one."""
    torch = torch_module()
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from engine.families import Family, detect_family
    from engine.samplers import make_scheduler

    try:  # the engine's own answer to which name this diffusers takes (torch_dtype was renamed dtype)
        from engine.loading import _dtype_keyword

        dtype_key = _dtype_keyword()
    except ImportError:
        dtype_key = "torch_dtype"
    t_load = time.perf_counter()
    # The plain call a bot makes (SDXL's pipeline has no safety checker to turn off).
    if detect_family(args.model) is Family.SDXL:
        pipe = StableDiffusionXLPipeline.from_pretrained(args.model, **{dtype_key: dtype})
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            args.model, safety_checker=None, requires_safety_checker=False, **{dtype_key: dtype}
        )
    pipe.scheduler = make_scheduler(args.sampler, None, pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t_load

    def one(seed: int) -> float:
        t0 = time.perf_counter()
        image = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            width=args.width,
            height=args.height,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return time.perf_counter() - t0

    try:
        one(10_000)  # untimed: the first calls allocate and pick kernels (on a CPU the first two are slow)
        one(10_001)
        reset_peak(device)
        walls: list[float] = []
        per_image: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            per_image += [one(i) for i in range(n)]
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        result: dict[str, Any] = {
            "images": n,
            "repeats": args.repeats,
            "wall_s": round(wall, 4),
            "images_per_s": round(n / wall, 4),
            "s_per_image": round(wall / n, 4),
            "images_per_s_each": [round(n / w, 4) for w in walls],
            "single_image_s": round(statistics.median(per_image), 4),
            "load_s": round(load_s, 2),
            **peak_memory(device),
        }
    finally:
        pipe = None  # drop the weights before the next phase measures its own peak memory
        free_memory(device)
    return result
