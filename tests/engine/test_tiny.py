"""The tiny random-weight model: built locally, loads offline, VAE scale factor 8, fast."""

from __future__ import annotations

import json
import time

import torch

from engine.__main__ import main


def test_make_tiny_model_cli_writes_a_loadable_pipeline(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "m")]) == 0
    assert str(tmp_path / "m") in capsys.readouterr().out
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m", local_files_only=True)
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("a photo of a cat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


def test_tiny_model_is_seeded(tiny_model, tmp_path):
    from engine.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "again")
    a = (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_tiny_model_is_fast_at_512(runner):
    pipe = runner.pipe
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    t0 = time.perf_counter()
    out = pipe(["a cat"] * 4, num_inference_steps=4, generator=gens, height=512, width=512)
    elapsed = time.perf_counter() - t0
    assert out.images[0].size == (512, 512)
    assert elapsed < 20  # ~2 s on 2 cores; generous for loaded CI machines
