"""The full-size SD 1.5 architecture (configs only, on the meta device) and its offline config folder."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def sd15_meta():
    from engine.sd15 import build_sd15_models

    return build_sd15_models("meta")


def test_parameter_counts_are_sd15s(sd15_meta):
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in sd15_meta.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert all(p.device.type == "meta" for p in sd15_meta["unet"].parameters())


def test_config_folder_has_the_real_clip_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path))
    from transformers import CLIPTokenizer

    from engine.loading import default_single_file_config

    folder = default_single_file_config()
    assert folder is not None and folder.is_relative_to(tmp_path)
    assert json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] == 768
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert default_single_file_config() == folder  # cached


def test_original_layout_keys_convert_back_at_full_size(sd15_meta):
    """Our diffusers->original naming is what diffusers' single-file loader reads, for the real SD 1.5."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from engine.checkpoint import unet_to_original, vae_to_original

    unet = sd15_meta["unet"]
    original = unet_to_original(unet.state_dict(), unet.config)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in original
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in original
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in original
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert set(back) == set(unet.state_dict())

    vae = sd15_meta["vae"]
    original = vae_to_original(vae.state_dict(), vae.config)
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    back = convert_ldm_vae_checkpoint(original, dict(vae.config))
    assert set(back) == set(vae.state_dict())
