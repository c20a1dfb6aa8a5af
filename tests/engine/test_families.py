"""Model families told apart by contents, per-family defaults and buckets, sidecar overrides."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest

from engine import families
from engine.families import Family, UnknownFamilyError, aspect_buckets, detect_family, model_defaults


def write_header(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str] | None = None) -> Path:
    """A .safetensors file with this header (the tensors' bytes are not needed to read the header)."""
    header: dict[str, Any] = {
        k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


SDXL_KEYS = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280],
    "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
}
SD2_KEYS = {"cond_stage_model.model.token_embedding.weight": [49408, 1024]}
SD1_KEYS = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]}


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        (SDXL_KEYS, Family.SDXL),
        (SD2_KEYS, Family.SD2),
        (SD1_KEYS, Family.SD1),
        # diffusers key names in one file: told by SDXL's size embedding, or the cross-attention width
        ({"unet.add_embedding.linear_1.weight": [1280, 2816]}, Family.SDXL),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": [640, 1024]}, Family.SD2),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": [640, 768]}, Family.SD1),
    ],
)
def test_single_files_are_told_apart_by_their_tensor_names(
    tmp_path: Path, shapes: dict[str, list[int]], family: Family
) -> None:
    # A misleading name: the family comes from the contents.
    assert detect_family(write_header(tmp_path / "sdxl_pony_v1-5.safetensors", shapes)) is family


def test_files_of_other_kinds_are_refused_with_a_reason(tmp_path: Path) -> None:
    refiner = write_header(
        tmp_path / "r.safetensors", {"conditioner.embedders.0.model.ln_final.weight": [1280]}
    )
    with pytest.raises(UnknownFamilyError, match="refiner"):
        detect_family(refiner)
    with pytest.raises(UnknownFamilyError, match="not an SD"):
        detect_family(
            write_header(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": [9, 3]})
        )
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(UnknownFamilyError, match="header of"):
        detect_family(huge)
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]")
    with pytest.raises(UnknownFamilyError, match="not a JSON object"):
        detect_family(tmp_path / "junk.safetensors")
    # A pickle cannot be looked into without running it: SD 1.x, the family of nearly all old .ckpt files.
    (tmp_path / "old.ckpt").write_bytes(b"PK")
    assert detect_family(tmp_path / "old.ckpt") is Family.SD1


def test_diffusers_folders(tmp_path: Path) -> None:
    def folder(name: str, index: dict[str, Any], unet: dict[str, Any]) -> Path:
        (tmp_path / name / "unet").mkdir(parents=True)
        (tmp_path / name / "model_index.json").write_text(json.dumps(index))
        (tmp_path / name / "unet" / "config.json").write_text(json.dumps(unet))
        return tmp_path / name

    xl = folder("a", {"_class_name": "StableDiffusionXLPipeline"}, {"cross_attention_dim": 2048})
    sd2 = folder("b", {"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 1024})
    sd1 = folder("c", {"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768})
    assert [detect_family(p) for p in (xl, sd2, sd1)] == [Family.SDXL, Family.SD2, Family.SD1]


def test_buckets_are_sdxls_at_1024_and_scaled_multiples_of_64_elsewhere() -> None:
    assert aspect_buckets(Family.SDXL) == list(families.SDXL_BUCKETS)
    for native in (512, 768):
        buckets = aspect_buckets(native)
        assert buckets[0] == (native, native)
        assert len(buckets) == len(families.SDXL_BUCKETS)
        for w, h in buckets:
            assert w % 64 == 0 and h % 64 == 0
            assert 0.85 <= w * h / native**2 <= 1.1
    assert aspect_buckets(Family.SD1)[1] == (576, 448)  # 1152x896 halved
    assert families.bucket_for_ratio(16, 9, Family.SDXL) == (1344, 768)
    assert families.bucket_for_ratio(2, 3, Family.SDXL) == (832, 1216)


def test_family_defaults_and_sd2_single_files_default_to_v_prediction(tmp_path: Path) -> None:
    xl = model_defaults(write_header(tmp_path / "xl.safetensors", SDXL_KEYS))
    assert (xl.native_size, xl.prediction_type) == (1024, None)
    sd2 = model_defaults(write_header(tmp_path / "two.safetensors", SD2_KEYS))
    assert (sd2.native_size, sd2.prediction_type) == (768, "v_prediction")
    marked = write_header(tmp_path / "vp.safetensors", {**SDXL_KEYS, "v_pred": [0]})
    assert model_defaults(marked).prediction_type == "v_prediction"
    assert model_defaults(write_header(tmp_path / "one.safetensors", SD1_KEYS)).native_size == 512


def test_a_sidecar_overrides_defaults_and_bad_values_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = write_header(tmp_path / "base512.safetensors", SD2_KEYS)
    (tmp_path / "base512.json").write_text(
        json.dumps(
            {
                "native_size": 512,
                "prediction_type": "epsilon",
                "sampler": "euler A",
                "steps": 9999,  # out of bounds: dropped
                "cfg": True,  # not a number: dropped
                "description": "A1111's own key: ignored",
                "preferred weight": 0.8,
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="engine.families"):
        d = model_defaults(model)
    assert (d.native_size, d.prediction_type, d.sampler, d.steps, d.cfg) == (
        512,
        "epsilon",
        "Euler a",
        20,
        7.0,
    )
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "steps" in warnings[0] and "cfg" in warnings[0]


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b"\xff\xfe", b"{" + b" " * (families.SIDECAR_BYTES + 1) + b"}"]
)
def test_a_broken_sidecar_is_ignored_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    model = write_header(tmp_path / "xl.safetensors", SDXL_KEYS)
    (tmp_path / "xl.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="engine.families"):
        assert model_defaults(model) == families.FAMILY_DEFAULTS[Family.SDXL]
        model_defaults(model)  # the same file again: not logged again
    assert len(caplog.records) == 1 and "xl.json" in caplog.records[0].getMessage()


def test_lora_family_from_metadata_keys_or_width(tmp_path: Path) -> None:
    def header(shapes: dict[str, list[int]], meta: dict[str, str] | None = None) -> dict[str, Any]:
        return families.read_safetensors_header(write_header(tmp_path / "l.safetensors", shapes, meta))

    assert (
        families.lora_family(header({"x": [1]}, {"ss_base_model_version": "sdxl_base_v1-0"})) is Family.SDXL
    )
    assert families.lora_family(header({"lora_te1_text_model_x.lora_down.weight": [4, 768]})) is Family.SDXL
    sd1 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768]}
    assert families.lora_family(header(sd1)) is Family.SD1
    assert families.lora_family(header({"unet.x.attn2.to_k.lora_A.weight": [4, 32]})) is None  # tiny: unknown
    assert families.context_dim(header({"unet.x.attn2.to_k.lora_A.weight": [4, 32]})) == 32
