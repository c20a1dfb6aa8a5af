"""SDXL through the real runner on the tiny SDXL (engine/tiny_sdxl.py): native size from its sidecar,
A1111 prompts on both text encoders, img2img, LoRAs of its family only, single files offline."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.families import Family, detect_family, model_defaults
from engine.protocol import JobDone, JobFailed, JobKind, JobProgress

from .conftest import request


@pytest.fixture(scope="module")
def sdxl_lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import make_tiny_lora
    from engine.tiny_sdxl import make_tiny_sdxl_lora

    folder = tmp_path_factory.mktemp("Lora")
    make_tiny_sdxl_lora(folder / "xl-ink.safetensors")
    make_tiny_lora(folder / "sd15-ink.safetensors")  # made for the tiny SD 1.x
    return folder


@pytest.fixture(scope="module")
def sdxl_runner(tiny_sdxl_dir: Path, sdxl_lora_dir: Path):
    from engine.runner import Runner

    r = Runner(tiny_sdxl_dir, device="cpu", max_batch=4, worker_id="xl", lora_dir=sdxl_lora_dir)
    yield r
    r.close()


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_sdxl_draws_at_its_native_size_with_emphasis_and_break(sdxl_runner, tiny_sdxl_dir: Path) -> None:
    assert sdxl_runner.slot.family is Family.SDXL
    native = model_defaults(tiny_sdxl_dir).native_size  # 64, from the tiny model's sidecar
    assert native == 64
    plain = request(
        "plain", prompt="a red fox", negative_prompt="blurry", width=native, height=native, count=2
    )
    a1111 = request(
        "a1111", prompt="a (red:1.4) fox BREAK snow", width=native, height=native, preview_every=1
    )
    events: list[object] = []
    results = sdxl_runner.run([plain, a1111], on_event=events.append)
    previews = [e.preview for e in events if isinstance(e, JobProgress) and e.preview]
    assert previews and Image.open(io.BytesIO(previews[0])).size[0] > 0  # SDXL's linear latent factors
    for job_id in ("plain", "a1111"):
        done = results[job_id]
        assert isinstance(done, JobDone), done
        assert all(size_of(image.png) == (native, native) for image in done.images)
    assert results["plain"].images[0].png != results["plain"].images[1].png  # seeds 1 and 2


def test_sdxl_embeddings_match_diffusers_and_pool_the_first_chunk(sdxl_runner) -> None:
    from engine.prompts_sdxl import encode_prompts_sdxl

    pipe = sdxl_runner.pipe
    # An empty negative takes the A1111 path (zeroed, as diffusers does for negative_prompt=None).
    ours = encode_prompts_sdxl(pipe, ["a photo of a cat"], [""], "cpu", torch.float32)
    assert ours is not None
    pe, npe, pooled, npooled = pipe.encode_prompt(
        "a photo of a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    torch.testing.assert_close(ours.prompt_embeds, pe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.pooled_prompt_embeds, pooled, rtol=1e-4, atol=1e-5)
    assert not ours.negative_prompt_embeds.any() and not ours.negative_pooled_prompt_embeds.any()
    assert not npe.any() and not npooled.any()

    # BREAK: two chunks of 77 tokens of both encoders' widths; pooled from the first chunk only (A1111).
    two = encode_prompts_sdxl(pipe, ["a cat BREAK a dog", "a cat"], ["x", "x"], "cpu", torch.float32)
    assert two is not None
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert two.prompt_embeds.shape == (2, 154, width)
    torch.testing.assert_close(two.pooled_prompt_embeds[0], two.pooled_prompt_embeds[1])
    assert not torch.equal(two.prompt_embeds[0, 77:], two.prompt_embeds[1, 77:])  # a dog vs padding
    # Emphasis changes the weighted token's vectors in both encoders' parts.
    weighted = encode_prompts_sdxl(pipe, ["a (cat:1.5)"], [""], "cpu", torch.float32)
    plain = encode_prompts_sdxl(pipe, ["a cat"], [""], "cpu", torch.float32)  # "": A1111's path
    assert weighted is not None and plain is not None
    diff = (weighted.prompt_embeds - plain.prompt_embeds)[0, 2]  # BOS, "a", "cat"
    assert diff[: pipe.text_encoder.config.hidden_size].abs().max() > 0
    assert diff[pipe.text_encoder.config.hidden_size :].abs().max() > 0


def test_sdxl_img2img_and_upscale(sdxl_runner) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buf, format="PNG")
    init = buf.getvalue()
    v = request("v", kind=JobKind.IMG2IMG, init_image=init, strength=0.5, steps=4, width=64, height=64)
    u = request("u", kind=JobKind.UPSCALE, init_image=init, strength=0.5, steps=2, width=64, height=64)
    results = sdxl_runner.run([v, u])
    assert isinstance(results["v"], JobDone) and size_of(results["v"].images[0].png) == (64, 64)
    assert isinstance(results["u"], JobDone) and size_of(results["u"].images[0].png) == (128, 128)


def test_an_sdxl_lora_applies_and_an_sd15_lora_is_refused_before_any_weight_changes(sdxl_runner) -> None:
    base = request("base", prompt="a cat", steps=2, width=64, height=64)
    styled = request("styled", prompt="a cat <lora:xl-ink:1>", steps=2, width=64, height=64)
    results = sdxl_runner.run([base, styled])
    assert isinstance(results["styled"], JobDone), results["styled"]
    assert results["styled"].images[0].png != results["base"].images[0].png

    sdxl_runner.run([request("off", prompt="a cat", steps=1, width=64, height=64)])  # adapters off again
    unet = sdxl_runner.pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    wrong = request("wrong", prompt="a cat <lora:sd15-ink:1>", steps=2, width=64, height=64)
    failed = sdxl_runner.run([wrong])["wrong"]
    assert isinstance(failed, JobFailed)
    assert "sd15-ink" in failed.reason and "SDXL" in failed.reason
    after = unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_lora_that_says_it_is_for_sd15_is_refused_before_it_is_queued(
    sdxl_runner, sdxl_lora_dir: Path
) -> None:
    from safetensors.torch import save_file

    from engine.requests import RequestError

    # kohya's metadata names the base model; the check reads the header only.
    meta = {"ss_base_model_version": "sd_v1"}
    save_file(
        {"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(sdxl_lora_dir / "kohya15.safetensors"), meta
    )
    with pytest.raises(RequestError, match=r"made for SD 1\.x models and this model is SDXL"):
        sdxl_runner.prepare(request("k", prompt="a cat <lora:kohya15:0.8>"))


def test_an_sdxl_single_file_loads_offline_as_sdxl(tiny_sdxl_dir: Path, tiny_sdxl_file: Path) -> None:
    from engine.loading import load_pipeline, pipeline_family, resolve_model

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # any hub call would raise
    assert detect_family(tiny_sdxl_file) is Family.SDXL
    assert model_defaults(tiny_sdxl_file).native_size == 64  # its own sidecar
    pipe = load_pipeline(resolve_model(str(tiny_sdxl_file)), single_file_config=tiny_sdxl_dir)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipeline_family(pipe) is Family.SDXL
    folder = load_pipeline(resolve_model(str(tiny_sdxl_dir)))
    for part in ("unet", "text_encoder_2"):
        ours, theirs = getattr(pipe, part).state_dict(), getattr(folder, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_shipped_configs_are_the_real_architectures(tmp_path: Path, monkeypatch) -> None:
    """What single files of each family load with offline: SDXL base's and SD 2.1's shapes (on the meta
    device: no memory), and tokenizers that give CLIP's ids."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.loading import default_single_file_config

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path))
    xl = default_single_file_config(Family.SDXL)
    sd2 = default_single_file_config(Family.SD2)
    assert xl is not None and sd2 is not None
    assert detect_family(xl) is Family.SDXL and detect_family(sd2) is Family.SD2
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(xl / "unet"))
        bigg = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(xl / "text_encoder_2"))
        unet2 = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd2 / "unet"))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 2567  # SDXL base's UNet
    assert round(sum(p.numel() for p in bigg.parameters()) / 1e6) == 695  # OpenCLIP bigG text tower
    assert round(sum(p.numel() for p in unet2.parameters()) / 1e6) == 866  # SD 2.x's UNet
    one, two = (
        CLIPTokenizer.from_pretrained(xl / "tokenizer"),
        CLIPTokenizer.from_pretrained(xl / "tokenizer_2"),
    )
    assert one("a cat")["input_ids"] == two("a cat")["input_ids"] == [49406, 320, 2368, 49407]
    assert (one.pad_token_id, two.pad_token_id) == (49407, 0)  # OpenCLIP pads with "!"


def test_the_command_line_makes_sdxl_models(tmp_path: Path) -> None:
    from engine.__main__ import build_parser, main

    assert main(["make-tiny-model", "--arch", "sdxl", str(tmp_path / "xl")]) == 0
    assert detect_family(tmp_path / "xl") is Family.SDXL
    assert model_defaults(tmp_path / "xl").native_size == 64  # the sidecar xl.json beside it
    args = build_parser().parse_args(["make-model", "--arch", "sdxl", "--random", str(tmp_path / "big")])
    assert (args.arch, args.random, args.dtype) == ("sdxl", True, "fp16")
    worker = build_parser().parse_args(["worker", "--model", "m", "--taesdxl", str(tmp_path / "taesdxl")])
    assert worker.taesdxl == str(tmp_path / "taesdxl")
