"""Previews (linear and TAESD), the optional safety checker, device/dtype choice."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from engine.devices import is_oom, resolve_device, resolve_dtype
from engine.preview import Previewer, latents_to_rgb
from engine.protocol import JobDone, JobProgress

from .conftest import request


def test_linear_preview_is_cheap():
    # Cheap by construction, counted in FLOPs rather than timed (a clock measures the CI machine): one
    # 4x3 product per latent pixel, no decoder. TAESD or the VAE would be millions per pixel.
    from torch.utils.flop_counter import FlopCounterMode

    latent = torch.randn(4, 64, 64)
    assert latents_to_rgb(latent).size == (64, 64)
    previewer = Previewer()
    with FlopCounterMode(display=False) as flops:
        data = previewer.preview(latent)
    assert flops.get_total_flops() <= 2 * 4 * 3 * 64 * 64
    assert Image.open(io.BytesIO(data)).size == (128, 128)


def test_taesd_previews(tiny_model, tmp_path):
    from engine.runner import Runner
    from engine.tiny import make_tiny_taesd

    r = Runner(tiny_model, device="cpu", taesd=make_tiny_taesd(tmp_path / "taesd"))
    try:
        assert r.previewer.kind == "taesd"
        events = []
        r.run([request("t", steps=3, preview_every=1, width=128, height=96)], on_event=events.append)
        previews = [e.preview for e in events if isinstance(e, JobProgress) and e.preview]
        assert len(previews) == 2
        assert Image.open(io.BytesIO(previews[0])).size == (128, 96)  # decoded at full size
    finally:
        r.close()


def test_safety_checker_flags_only_requests_that_ask(tiny_model, tmp_path):
    from engine.runner import Runner
    from engine.safety import make_tiny_safety_checker

    r = Runner(
        tiny_model,
        device="cpu",
        safety_checker=make_tiny_safety_checker(tmp_path / "sc", flag_everything=True),
    )
    try:
        res = r.run(
            [request("sfw", safety_check=True, count=2), request("nsfw-ok", safety_check=False, seed=9)]
        )
        assert isinstance(res["sfw"], JobDone) and [i.nsfw for i in res["sfw"].images] == [True, True]
        black = Image.open(io.BytesIO(res["sfw"].images[0].png)).convert("RGB")
        assert black.getextrema() == ((0, 0), (0, 0), (0, 0))
        assert [i.nsfw for i in res["nsfw-ok"].images] == [False]
        assert res["sfw"].grid is None  # nothing to show: no grid (the bot posts the notice alone)
    finally:
        r.close()


def test_safety_check_without_a_checker_passes_images(runner):
    res = runner.run([request("x", safety_check=True)])["x"]
    assert isinstance(res, JobDone) and not res.images[0].nsfw


def test_devices_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"unknown device|unsupported"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    with pytest.raises(ValueError, match="not supported on the CPU"):
        resolve_dtype("fp16", cpu)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("fp32", torch.device("cuda", 0)) == torch.float32


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(ValueError("x"))
