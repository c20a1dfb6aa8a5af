"""The A1111 `parameters` text: written like create_infotext, read back with A1111's parse rules."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from engine.pnginfo import (
    RE_PARAM,
    format_parameters,
    parse_parameters,
    quote,
    read_png_parameters,
    recall_parameters,
)

A1111_EXAMPLE = """a lighthouse on a cliff at sunset, oil painting
Negative prompt: blurry, lowres
Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Version: v1.6.0"""


def test_format_matches_a1111_example():
    text = format_parameters(
        prompt="a lighthouse on a cliff at sunset, oil painting",
        negative_prompt="blurry, lowres",
        steps=30,
        sampler="DPM++ 2M Karras",
        cfg_scale=7.0,
        seed=1234567890,
        width=512,
        height=768,
        model="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        version="v1.6.0",
    )
    assert text == A1111_EXAMPLE


def test_parse_a1111_example():
    res = parse_parameters(A1111_EXAMPLE)
    assert res["Prompt"] == "a lighthouse on a cliff at sunset, oil painting"
    assert res["Negative prompt"] == "blurry, lowres"
    assert res["Steps"] == "30" and res["Sampler"] == "DPM++ 2M Karras" and res["CFG scale"] == "7"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768") and res["Model hash"] == "6ce0161689"
    assert res["Version"] == "v1.6.0"


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a cat", ""),
        ("line one\nline two: with colon, and comma", "neg\nalso neg"),
        ("emoji 🐱 and ünïcode, (word:1.2) [x] <lora:y:0.8>", "Negative prompt inside"),
        ("", "only negative"),
    ],
)
def test_round_trip(prompt, negative):
    text = format_parameters(
        prompt=prompt,
        negative_prompt=negative,
        steps=20,
        sampler="Euler a",
        cfg_scale=6.5,
        seed=42,
        width=640,
        height=384,
        model="my, model: v2",
        extras={"Denoising strength": 0.35, "Hires upscale": 2.0, "Note": 'has "quotes", and\nnewline'},
    )
    assert len(RE_PARAM.findall(text.split("\n")[-1])) >= 3
    rec = recall_parameters(text)
    assert rec.prompt == prompt and rec.negative_prompt == negative
    assert (rec.steps, rec.sampler, rec.cfg_scale, rec.seed) == (20, "Euler a", 6.5, 42)
    assert (rec.width, rec.height, rec.model, rec.strength) == (640, 384, "my, model: v2", 0.35)
    res = parse_parameters(text)
    assert res["Hires upscale"] == "2" and res["Note"] == 'has "quotes", and\nnewline'


def test_quote_rules():
    assert quote("plain") == "plain"
    assert quote("a, b") == '"a, b"' and quote("a: b") == '"a: b"' and quote("a\nb") == '"a\\nb"'


def test_text_without_parameters_is_all_prompt():
    res = parse_parameters("just a prompt\nSteps: 20")
    assert res["Prompt"] == "just a prompt\nSteps: 20" and res["Negative prompt"] == ""


@pytest.mark.parametrize("prompt", ["ascii prompt", "ünïcode 🐱 prompt"])
def test_png_chunk_round_trip(prompt):
    text = format_parameters(prompt=prompt, steps=1, sampler="DDIM", cfg_scale=1, seed=0, width=8, height=8)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    assert read_png_parameters(buf.getvalue()) == text
    assert parse_parameters(read_png_parameters(buf.getvalue()))["Prompt"] == prompt
