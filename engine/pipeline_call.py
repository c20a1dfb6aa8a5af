"""One diffusers call for a batch of (job, image index) items that share a batch key: which pipeline
(text-to-image or img2img) and what it is called with.

- image ``i`` of a request gets its own CPU ``torch.Generator`` seeded ``seeds[i]`` (the same image alone or
  in a batch); DPM++ SDE gets one Brownian tree per image on the same seed;
- prompts carry their embeddings' tokens (engine/embeddings.py), the batch's LoRAs are applied, the sampler
  is made afresh from the model's scheduler config, and the text conditioning per step is
  engine/conditioning.py's;
- large images are VAE-tiled; the step callback is the caller's progress (swapping the text embeddings at
  the steps where prompt editing changes them).

Out-of-memory splitting and failures are the runner's (engine/runner.py): this raises what the pipeline
raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from engine import bounds, conditioning, families
from engine.families import Family
from engine.jobs import Job
from engine.protocol import JobKind
from engine.samplers import make_scheduler, uses_noise_seeds

if TYPE_CHECKING:
    from engine.embeddings import EmbeddingLibrary
    from engine.loras import LoraLibrary
    from engine.model_slot import ModelSlot
    from engine.progress import StepProgress

TILING_ABOVE_PIXELS = 1024 * 1024  # VAE tiling for larger images (an upscaled 1024x1024 is still untiled)


def default_clip_skip(job: Job, family: Family) -> int:
    """The clip skip of a request that leaves it at 0: the model's (its name.json sidecar's), else 1."""
    try:
        return families.model_defaults(job.source.location, family).clip_skip or 1
    except (OSError, ValueError):  # a hub id is no path; an unreadable file was caught at load
        return 1


def call_pipeline(
    slot: ModelSlot,
    items: list[tuple[Job, int]],
    progress: StepProgress,
    *,
    loras: LoraLibrary,
    embeddings: EmbeddingLibrary,
    device: torch.device,
    dtype: torch.dtype,
) -> list[Image.Image]:
    """Run the loaded model of ``slot`` on ``items`` (one UNet batch) and return their images in order."""
    key = items[0][0].key
    generators = [torch.Generator("cpu").manual_seed(job.request.seeds[i]) for job, i in items]
    kwargs: dict[str, Any] = {
        # Embedding names become the tokens they are loaded under (engine/embeddings.py).
        "prompt": [embeddings.rewrite(job.prompt, job.embeddings) for job, _ in items],
        "negative_prompt": [
            embeddings.rewrite(job.request.negative_prompt, job.embeddings) for job, _ in items
        ],
        "num_inference_steps": key.steps,
        "guidance_scale": key.cfg_scale,
        "generator": generators,
        "output_type": "pil",
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    if key.kind == JobKind.TXT2IMG:
        pipe = slot.pipe
        kwargs.update(width=key.width, height=key.height)
    else:
        pipe = slot.img2img
        kwargs.update(image=[job.init_image for job, _ in items], strength=key.strength)
        # Diffusers builds a schedule of num_inference_steps and runs int(steps * strength) of it; the
        # schedule is lengthened to run at least one, never past bounds.STEPS (prepare checked both).
        kwargs["num_inference_steps"] = bounds.img2img_schedule(key.steps, key.strength or 1.0)
    # Before encoding: a LoRA may change the text encoder too. The img2img pipeline shares these modules.
    loras.apply(slot.pipe, key.loras)
    # Before encoding: prompt editing counts the sampler's model calls (two per step for second order).
    pipe.scheduler = make_scheduler(key.sampler, key.scheduler, slot.base_scheduler_config)
    if uses_noise_seeds(pipe.scheduler):  # DPM++ SDE: one Brownian tree per image, on the image's seed
        pipe.scheduler.noise_sampler_seed = [job.request.seeds[i] for job, i in items]
    schedule = conditioning.text_inputs(
        pipe,
        kwargs,
        sdxl=slot.family is Family.SDXL,
        calls=conditioning.schedule_steps(key.steps, pipe.scheduler),
        size=(key.width, key.height),
        clip_skip=key.clip_skip or default_clip_skip(items[0][0], slot.family),
        device=device,
        dtype=dtype,
    )
    if key.width * key.height > TILING_ABOVE_PIXELS:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()

    kwargs["callback_on_step_end"] = progress
    if schedule is not None and not schedule.static:  # each row's text changes at its own steps
        kwargs["callback_on_step_end"] = conditioning.ScheduleSwap(schedule, progress)
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    out = pipe(**kwargs)
    return list(out.images)
