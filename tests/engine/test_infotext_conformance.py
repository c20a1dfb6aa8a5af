"""Infotext conformance with AUTOMATIC1111 1.10.

The table: parameter texts as A1111's ``create_infotext`` writes them (quoting, Lora/TI hashes, Schedule
type, Clip skip, RNG, hires fix, old combined sampler names and old versions), each with the dict that A1111's
``parse_generation_parameters`` returns for it with its default settings, worked out by hand from A1111's
code (modules/infotext_utils.py, modules/infotext_versions.py) and written here as literal data.

Then the engine's own texts, from real jobs on the tiny model: what A1111 reads back from them must rebuild
the picture (same seed, sampler, schedule type, noise source, size; an upscale not doubled again).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from engine.pnginfo import (
    format_parameters,
    grid_parameters,
    parse_generation_parameters,
    read_png_parameters,
    recall_parameters,
)
from engine.protocol import JobDone, JobKind
from tests.engine.conftest import request

# What A1111 1.10's parse_generation_parameters adds to every text that lacks these keys.
A1111_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}


def a1111(**fields: Any) -> dict[str, Any]:
    return {**A1111_DEFAULTS, **fields}


CONFORMANCE: list[tuple[str, str, dict[str, Any]]] = [
    (
        "1.10 txt2img, resolved schedule type",
        "a lighthouse on a cliff, oil painting\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1",
        a1111(
            Prompt="a lighthouse on a cliff, oil painting",
            **{"Negative prompt": "blurry, lowres", "Schedule type": "Karras", "CFG scale": "7"},
            Steps="30",
            Sampler="DPM++ 2M",
            Seed="1234567890",
            **{"Size-1": "512", "Size-2": "768", "Model hash": "6ce0161689"},
            Model="v1-5-pruned-emaonly",
            Version="v1.10.1",
        ),
    ),
    (
        "clip skip, CPU noise, ENSD, Automatic schedule",
        "1girl, (masterpiece:1.2), [blurry]\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x512, "
        "Model hash: 1d7a7a1bd9, Model: anything-v3, Clip skip: 2, ENSD: 31337, RNG: CPU, Version: v1.10.1",
        a1111(
            Prompt="1girl, (masterpiece:1.2), [blurry]",
            **{"Negative prompt": "", "CFG scale": "7.5", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler a",
            Seed="42",
            **{"Model hash": "1d7a7a1bd9", "Clip skip": "2"},
            Model="anything-v3",
            ENSD="31337",
            RNG="CPU",
            Version="v1.10.1",
        ),
    ),
    (
        "LoRA tags stay in the prompt; Lora hashes quoted (they hold ': ' and ', ')",
        "a cat <lora:ink_style:0.8>, <lora:add_detail:0.5>\n"
        "Steps: 25, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 6, Seed: 7, Size: 512x640, "
        'Model hash: abcdef0123, Model: dreamshaper_8, Lora hashes: "ink_style: 0123456789ab, '
        'add_detail: ba9876543210", Version: v1.10.1',
        a1111(
            Prompt="a cat <lora:ink_style:0.8>, <lora:add_detail:0.5>",
            **{"Negative prompt": "", "Schedule type": "Karras", "CFG scale": "6"},
            Steps="25",
            Sampler="DPM++ SDE",
            Seed="7",
            **{"Size-1": "512", "Size-2": "640", "Model hash": "abcdef0123"},
            Model="dreamshaper_8",
            **{"Lora hashes": "ink_style: 0123456789ab, add_detail: ba9876543210"},
            Version="v1.10.1",
        ),
    ),
    (
        "an embedding in the negative prompt: TI hashes",
        "portrait of a knight\n"
        "Negative prompt: easynegative, bad_hands_5\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 512x512, "
        'Model hash: 6ce0161689, Model: v1-5, TI hashes: "easynegative: c74b4e810b03, bad_hands_5: '
        'aa7651be154c", Version: v1.10.1',
        a1111(
            Prompt="portrait of a knight",
            **{"Negative prompt": "easynegative, bad_hands_5", "Schedule type": "Karras"},
            Steps="20",
            Sampler="DPM++ 2M",
            **{"CFG scale": "7", "Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689"},
            Seed="3",
            Model="v1-5",
            **{"TI hashes": "easynegative: c74b4e810b03, bad_hands_5: aa7651be154c"},
            Version="v1.10.1",
        ),
    ),
    (
        "hires fix: Size is the first pass",
        "a castle\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 11, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5, Denoising strength: 0.35, RNG: CPU, Hires upscale: 2, "
        "Hires steps: 7, Hires upscaler: Lanczos, Version: v1.10.1",
        a1111(
            Prompt="a castle",
            **{"Negative prompt": "", "Schedule type": "Karras", "CFG scale": "7"},
            Steps="20",
            Sampler="DPM++ 2M",
            Seed="11",
            **{"Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689"},
            Model="v1-5",
            **{"Denoising strength": "0.35", "Hires upscale": "2", "Hires steps": "7"},
            **{"Hires upscaler": "Lanczos"},
            RNG="CPU",
            Version="v1.10.1",
        ),
    ),
    (
        "hires fix to an exact size: Hires resize splits like Size",
        "a castle\n"
        "Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 11, Size: 512x384, "
        "Denoising strength: 0.5, Hires resize: 1024x768, Hires upscaler: Latent, Version: v1.10.1",
        a1111(
            Prompt="a castle",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "384"},
            Steps="20",
            Sampler="Euler",
            Seed="11",
            **{"Denoising strength": "0.5", "Hires resize-1": "1024", "Hires resize-2": "768"},
            **{"Hires upscaler": "Latent"},
            Version="v1.10.1",
        ),
    ),
    (
        "pre-1.9 combined sampler name: kept as written (A1111 splits it when it applies the text)",
        "a fox\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 6ce0161689, "
        "Model: v1-5, Version: v1.6.0",
        a1111(
            Prompt="a fox",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="30",
            Sampler="DPM++ 2M Karras",
            Seed="5",
            **{"Model hash": "6ce0161689", "Downcast alphas_cumprod": True},
            Model="v1-5",
            Version="v1.6.0",
        ),
    ),
    (
        "before 1.6: old prompt-editing timelines and DDIM's old padding",
        "a [cat:dog:0.5] in a hat\n"
        "Steps: 50, Sampler: DDIM, CFG scale: 7, Seed: 9, Size: 512x512, Model hash: 6ce0161689, "
        "Version: v1.5.1",
        a1111(
            Prompt="a [cat:dog:0.5] in a hat",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="50",
            Sampler="DDIM",
            Seed="9",
            **{"Model hash": "6ce0161689", "Old prompt editing timelines": True, "Pad conds v0": True},
            **{"Downcast alphas_cumprod": True},
            Version="v1.5.1",
        ),
    ),
    (
        "a dev build's version: only the part before the second dash counts (post-release 225)",
        "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Version: v1.7.0-225-g1a2b3c4",
        a1111(
            Prompt="a fox",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler a",
            Seed="1",
            Version="v1.7.0-225-g1a2b3c4",
        ),
    ),
    (
        "one commit earlier: downcast alphas",
        "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Version: v1.7.0-224-g1a2b3c4",
        a1111(
            Prompt="a fox",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler a",
            Seed="1",
            **{"Downcast alphas_cumprod": True},
            Version="v1.7.0-224-g1a2b3c4",
        ),
    ),
    (
        "the engine's own version is no PEP 440 version: no old-version flags, even with [ and DDIM",
        "a [cat:dog:0.5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 64x64, RNG: CPU, "
        "Version: imaginebot-0.1.0",
        a1111(
            Prompt="a [cat:dog:0.5]",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "64", "Size-2": "64"},
            Steps="20",
            Sampler="DDIM",
            Seed="1",
            RNG="CPU",
            Version="imaginebot-0.1.0",
        ),
    ),
    (
        "BREAK, emphasis and escapes verbatim; prompt and negative over several lines",
        "(masterpiece:1.2), \\(parens\\) BREAK [[soft]] light\nsecond line: with colon\n"
        "Negative prompt: (worst quality:1.4),\nbad hands\n"
        "Steps: 28, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 5, Seed: 77, Size: 768x512",
        a1111(
            Prompt="(masterpiece:1.2), \\(parens\\) BREAK [[soft]] light\nsecond line: with colon",
            **{"Negative prompt": "(worst quality:1.4),\nbad hands", "Schedule type": "Exponential"},
            Steps="28",
            Sampler="DPM++ 2M SDE",
            **{"CFG scale": "5", "Size-1": "768", "Size-2": "512"},
            Seed="77",
        ),
    ),
    (
        "a quoted value with escaped quotes, a comma and a newline; an empty value is skipped",
        "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Model: , "
        'Note: "has \\"quotes\\", and\\nnewline", Pad conds: True',
        a1111(
            Prompt="a cat",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
            Note='has "quotes", and\nnewline',
            **{"Pad conds": "True"},
        ),
    ),
    (
        "fewer than 3 parameters on the last line: it is prompt text",
        "a cat\nSteps: 20, Seed: 1",
        a1111(Prompt="a cat\nSteps: 20, Seed: 1", **{"Negative prompt": ""}),
    ),
    (
        "pre-1.0 hires fix, automatic first pass: about 512x512 in multiples of 64",
        "a tower\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x768, "
        "First pass size: 0x0, Denoising strength: 0.7",
        a1111(
            Prompt="a tower",
            **{"Negative prompt": "", "CFG scale": "7", "Denoising strength": "0.7"},
            Steps="20",
            Sampler="Euler a",
            Seed="1",
            **{"First pass size-1": "0", "First pass size-2": "0"},
            **{"Size-1": 640, "Size-2": 448, "Hires resize-1": 1024, "Hires resize-2": 768},
        ),
    ),
    (
        "pre-1.0 hires fix with its first pass given",
        "a tower\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x1024, "
        "First pass size: 448x448, Denoising strength: 0.7",
        a1111(
            Prompt="a tower",
            **{"Negative prompt": "", "CFG scale": "7", "Denoising strength": "0.7"},
            Steps="20",
            Sampler="Euler a",
            Seed="1",
            **{"First pass size-1": "448", "First pass size-2": "448"},
            **{"Size-1": 448, "Size-2": 448, "Hires resize-1": 1024, "Hires resize-2": 1024},
        ),
    ),
    (
        "a hypernetwork goes back into the prompt; variation seed; seed resize splits",
        "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Variation seed: 99, "
        "Variation seed strength: 0.3, Seed resize from: 768x768, Hypernet: anime_3, Hypernet strength: 0.5",
        a1111(
            Prompt="a cat<hypernet:anime_3:0.5>",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
            **{"Variation seed": "99", "Variation seed strength": "0.3"},
            **{"Seed resize from-1": "768", "Seed resize from-2": "768"},
            Hypernet="anime_3",
            **{"Hypernet strength": "0.5"},
        ),
    ),
    (
        "FP8 weights: the LoRA cache flag defaults to False",
        "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x1024, "
        "FP8 weight: Enable for SDXL",
        a1111(
            Prompt="a cat",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "1024", "Size-2": "1024"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
            **{"FP8 weight": "Enable for SDXL", "Cache FP16 weight for LoRA": False},
        ),
    ),
    (
        "unquoted hashes (as some tools write them): the value ends at the first comma, and a key of one "
        "character is never a key",
        "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Lora hashes: ink: 0123456789ab, b: ba9876543210",
        a1111(
            Prompt="a cat",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
            **{"Lora hashes": "ink: 0123456789ab"},
        ),
    ),
    (
        "no spaces after colons and commas; a quote inside a value is kept; a trailing comma",
        'a cat\nSteps:20,Sampler:Euler a,CFG scale:7,Seed:1,Size:512x512,Note: say "hi",',
        a1111(
            Prompt="a cat",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler a",
            Seed="1",
            Note='say "hi"',
        ),
    ),
    (
        "'Negative prompt:' counts only at a line's start; CRLF line ends; lines are stripped",
        "a sign saying Negative prompt: none\r\n  second line  \r\nNegative prompt: ugly\r\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512\r\n",
        a1111(
            Prompt="a sign saying Negative prompt: none\nsecond line",
            **{"Negative prompt": "ugly", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
        ),
    ),
    (
        "an empty prompt: the text is the parameter line alone",
        "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512",
        a1111(
            Prompt="",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
        ),
    ),
    (
        "a model name with a comma and colon is quoted; unicode stays as is",
        "ünïcode 🐱 prompt\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
        'Model: "my, model: v2", Schedule type: Align Your Steps',
        a1111(
            Prompt="ünïcode 🐱 prompt",
            **{"Negative prompt": "", "CFG scale": "7", "Size-1": "512", "Size-2": "512"},
            Steps="20",
            Sampler="Euler",
            Seed="1",
            Model="my, model: v2",
            **{"Schedule type": "Align Your Steps"},
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in CONFORMANCE], ids=[n for n, _, _ in CONFORMANCE]
)
def test_a1111_reads_what_its_parser_reads(text: str, expected: dict[str, Any]) -> None:
    assert parse_generation_parameters(text) == expected


@pytest.mark.parametrize(
    ("prompt", "negative", "model"),
    [
        ("a cat, (fluffy:1.3), [blurry] BREAK night: moon", 'lowres, "bad" hands', "v1-5"),
        ("line one\nline two: with colon", "", "my, model: v2"),
        ('quotes "inside", and \\ backslash', "neg\nalso neg", "plain"),
    ],
)
def test_a1111_reads_back_what_the_engine_writes(prompt: str, negative: str, model: str) -> None:
    # create_infotext quotes field values, never the prompt: A1111 must get every field back verbatim.
    extras = {"Clip skip": 2, "RNG": "CPU", "Lora hashes": "ink: 0123456789ab, b: ba9876543210"}
    text = format_parameters(
        prompt=prompt,
        negative_prompt=negative,
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=7.5,
        seed=4294967295,
        width=512,
        height=768,
        model=model,
        model_hash="6ce0161689",
        extras=extras,
    )
    got = parse_generation_parameters(text)
    assert (got["Prompt"], got["Negative prompt"], got["Model"]) == (prompt, negative, model)
    assert (got["Sampler"], got["Schedule type"], got["CFG scale"], got["Seed"]) == (
        "DPM++ 2M",
        "Karras",
        "7.5",
        "4294967295",
    )
    assert (got["Clip skip"], got["RNG"], got["Lora hashes"]) == ("2", "CPU", extras["Lora hashes"])
    assert "Old prompt editing timelines" not in got and "Downcast alphas_cumprod" not in got


def test_grid_text_is_the_first_images_with_every_seed() -> None:
    second = format_parameters(
        prompt="a, b", steps=2, sampler="Euler", cfg_scale=7, seed=101, width=8, height=8
    )
    grid = grid_parameters(second, [100, 101, 102, 103])
    assert grid is not None
    got = parse_generation_parameters(grid)
    assert got["Seed"] == "100" and got["Seeds"] == "100, 101, 102, 103" and got["Prompt"] == "a, b"
    assert grid.endswith("Version: imaginebot-0.1.0")  # Seeds goes before Version, as extras do
    assert grid_parameters(grid, [100, 101, 102, 103]) == grid  # applying it twice changes nothing
    assert (
        grid_parameters(None, [1, 2]) is None and grid_parameters("just a prompt", [1, 2]) == "just a prompt"
    )


def test_recall_reads_schedule_type_and_clip_skip() -> None:
    rec = recall_parameters(CONFORMANCE[1][1])
    assert (rec.sampler, rec.scheduler, rec.clip_skip, rec.seed) == ("Euler a", "Automatic", 2, 42)
    # As A1111 reads them: Karras is DPM++ 2M's own schedule (Automatic); a missing Clip skip is 1.
    rec = recall_parameters(CONFORMANCE[0][1])
    assert (rec.sampler, rec.scheduler, rec.clip_skip) == ("DPM++ 2M", "Automatic", 1)
    plain = recall_parameters("just a prompt")
    assert (plain.prompt, plain.scheduler, plain.clip_skip) == ("just a prompt", None, None)


@pytest.mark.parametrize(
    ("sampler", "schedule_type", "expected"),
    [
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Automatic")),  # pre-1.9: Karras was its only form
        ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "Karras")),  # not its default (Exponential)
        ("Euler Karras", "Automatic", ("Euler", "Karras")),  # the name's schedule wins over the field
        ("DPM++ 2M SDE", "Exponential", ("DPM++ 2M SDE", "Automatic")),
        ("Euler a", "Uniform", ("Euler a", "Uniform")),
        ("Some Sampler", "Karras", ("Some Sampler", "Karras")),  # unknown here: kept, the request says why
    ],
)
def test_recall_splits_old_combined_sampler_names(
    sampler: str, schedule_type: str | None, expected: tuple[str, str]
) -> None:
    text = format_parameters(
        prompt="a",
        steps=20,
        sampler=sampler,
        schedule_type=schedule_type,
        cfg_scale=7,
        seed=1,
        width=8,
        height=8,
    )
    rec = recall_parameters(text)
    assert (rec.sampler, rec.scheduler) == expected


# ------------------------------------------------------------------------------ engine texts, real jobs


def a1111_txt2img_size(d: dict[str, Any]) -> tuple[int, int]:
    """The size A1111's txt2img renders a pasted text at (its paste rules in modules/ui.py and its hires
    target in processing.py): hires fix is switched on by a Denoising strength together with Hires upscale,
    Hires upscaler or Hires resize-1, which parse_generation_parameters always adds (0): so by any text with
    a Denoising strength; the scale then defaults to the UI's 2."""
    width, height = int(d["Size-1"]), int(d["Size-2"])
    enable_hr = "Denoising strength" in d and any(
        k in d for k in ("Hires upscale", "Hires upscaler", "Hires resize-1")
    )
    if not enable_hr:
        return width, height
    resize_x, resize_y = int(d["Hires resize-1"]), int(d["Hires resize-2"])
    if resize_x == 0 and resize_y == 0:
        scale = float(d.get("Hires upscale", 2.0))
        return int(width * scale), int(height * scale)
    return resize_x, resize_y


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def test_engine_images_read_back_in_a1111(runner) -> None:
    txt = runner.run([request("t", prompt="a fox, (red:1.2) BREAK snow", seed=40, count=2, clip_skip=2)])["t"]
    assert isinstance(txt, JobDone)
    for i, image in enumerate(txt.images):
        got = parse_generation_parameters(read_png_parameters(image.png) or "")
        assert got["Prompt"] == "a fox, (red:1.2) BREAK snow" and got["Seed"] == str(40 + i)
        assert got["RNG"] == "CPU" and got["Clip skip"] == "2" and got["Steps"] == "2"
        # BREAK makes the prompt 2 chunks, the empty negative 1: padded to one length, as A1111's option does.
        assert got["Pad conds"] == "True"
        # A1111 1.10 reads a plain "DPM++ 2M" as Karras, and so does the engine: it says so.
        assert (got["Sampler"], got["Schedule type"]) == ("DPM++ 2M", "Karras")
        assert "Denoising strength" not in got and "Old prompt editing timelines" not in got
        assert a1111_txt2img_size(got) == _png_size(image.png) == (64, 64)

    # A sampler without a schedule of its own, on Automatic: A1111 writes Automatic (the model's sigmas).
    euler = runner.run([request("e", sampler="Euler a", steps=1)])["e"]
    assert isinstance(euler, JobDone)
    got = parse_generation_parameters(read_png_parameters(euler.images[0].png) or "")
    assert (got["Sampler"], got["Schedule type"]) == ("Euler a", "Automatic")
    assert "Pad conds" not in got and got["Clip skip"] == "1"  # neither written: A1111's defaults

    # U1: the first picture upscaled 2x at 0.35, as the bot asks for it.
    up = runner.run(
        [
            request(
                "u",
                prompt="a fox, (red:1.2) BREAK snow",
                kind=JobKind.UPSCALE,
                init_image=txt.images[0].png,
                strength=0.35,
                steps=6,
                seed=40,
                width=128,
                height=128,
                clip_skip=2,
            )
        ]
    )["u"]
    assert isinstance(up, JobDone)
    got = parse_generation_parameters(read_png_parameters(up.images[0].png) or "")
    assert (got["Size-1"], got["Size-2"], got["Seed"]) == (
        "64",
        "64",
        "40",
    )  # the first pass: the picture U1 took
    assert (
        got["Hires upscale"] == "2"
        and got["Hires upscaler"] == "Lanczos"
        and got["Denoising strength"] == "0.35"
    )
    assert got["Hires steps"] == "2"  # int(6 x 0.35): the denoising steps the engine ran
    assert got["Clip skip"] == "2" and got["RNG"] == "CPU"
    assert a1111_txt2img_size(got) == _png_size(up.images[0].png) == (128, 128)  # not doubled again
