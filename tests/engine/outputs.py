"""Comparing what the engine renders, and looking at what it hands the model, in ways that hold on any CPU.

The tiny model's weights are random, so how much a small change of input (a prompt weight, a LoRA) moves
its 8-bit picture depends on those weights and on how the CPU rounds. Tests therefore assert what the code
guarantees, where it guarantees it: the embeddings or the noise prediction the model is given; pictures
only as "the same up to float rounding", with a bound far from both rounding noise and any real
difference. (Asserting that two pictures differ once hid a real bug: emphasis scaled by a ratio of rounding
errors, which made (cat:1.6) and [[cat]] bit-identical on one CI machine; see test_prompts.py.)
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from engine.protocol import JobDone


def pixels(done: JobDone, i: int = 0) -> np.ndarray:
    """Image ``i`` of a finished job as RGB levels (int16, so differences do not wrap)."""
    assert isinstance(done, JobDone), done
    return np.asarray(Image.open(io.BytesIO(done.images[i].png)).convert("RGB")).astype(np.int16)


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """The same picture up to float rounding.

    Same seed and inputs through a different batch size (UNet, text encoder, VAE) may round differently in
    the last bit, and the CPU decides how; that moves a few pixels by a level or two. Any real difference
    (another seed, prompt, LoRA or sampler) moves most pixels, by levels on average (measured on the tiny
    model: another prompt 2.2 on average, another seed 38). The bounds sit far from both, and only the
    mean and a rare-outlier share are bounded, never the single largest pixel, which is what rounding can
    push over any fixed line.
    """
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    outliers = float((diff > 4).mean())
    assert diff.mean() < 0.25 and outliers < 0.002, (float(diff.mean()), outliers)


@contextmanager
def unet_outputs(pipe: Any) -> Iterator[list[Any]]:
    """Every noise prediction the pipeline's UNet makes inside the block, in call order (detached copies).

    What a LoRA changes is the UNet: its first prediction (same seed, so the same latents go in) shows the
    adapter at work without going through eight-bit pictures."""
    seen: list[Any] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        seen.append(sample.detach().clone())

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    handle = unet.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
