"""AUTOMATIC1111-compatible PNG ``parameters`` text (``create_infotext`` / ``parse_generation_parameters``).

Torch-free: the bot imports it to show and recall the parameters of an image (the info button).

Format::

    <prompt, may span lines>
    Negative prompt: <negative prompt>          (omitted when empty)
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768, Model hash: ..., Model: ...,
    <extras...>, Version: ...

The last line is one line of ``Key: value`` pairs joined by ``, ``; values containing ``,`` ``:`` or a
newline are JSON-quoted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENGINE_VERSION = "imaginebot-0.1.0"

# A1111's modules/infotext_utils.py
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(text: Any) -> str:
    """A1111's ``quote``: JSON-quote a value containing ``,``, ``:`` or a newline."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_parameters(
    *,
    prompt: str,
    negative_prompt: str = "",
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str | None = None,
    model_hash: str | None = None,
    extras: Mapping[str, Any] | None = None,
    version: str | None = ENGINE_VERSION,
) -> str:
    """The ``parameters`` text, as A1111's ``create_infotext`` writes it. ``extras`` (e.g. ``{"Denoising
    strength": 0.75, "Hires upscale": 2}``) go after ``Model``; ``None`` values are left out."""
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": _number(cfg_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
    }
    for key, value in (extras or {}).items():
        params[key] = _number(value) if isinstance(value, float) else value
    params["Version"] = version
    generation = ", ".join(
        k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None and v != ""
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{generation}".strip()


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's ``parse_generation_parameters`` (without its defaults for missing keys): ``Prompt``,
    ``Negative prompt`` and every ``Key: value`` of the last line as strings; ``Size`` becomes ``Size-1``
    (width) and ``Size-2`` (height), like A1111."""
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


@dataclass(slots=True)
class RecalledParameters:
    """The request fields that a ``parameters`` text gives back (for "reuse these settings")."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    strength: float | None = None


def _maybe(kind: type, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return None


def recall_parameters(text: str) -> RecalledParameters:
    """Parse ``text`` with A1111's rules into typed request fields (missing or malformed ones: ``None``)."""
    res = parse_parameters(text)
    return RecalledParameters(
        prompt=res.get("Prompt", ""),
        negative_prompt=res.get("Negative prompt", ""),
        steps=_maybe(int, res.get("Steps")),
        sampler=res.get("Sampler"),
        cfg_scale=_maybe(float, res.get("CFG scale")),
        seed=_maybe(int, res.get("Seed")),
        width=_maybe(int, res.get("Size-1")),
        height=_maybe(int, res.get("Size-2")),
        model=res.get("Model"),
        strength=_maybe(float, res.get("Denoising strength")),
    )


def read_png_parameters(png: bytes) -> str | None:
    """The ``parameters`` text chunk of a PNG (needs Pillow), or ``None``."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        value = image.info.get("parameters")
        if value is None and hasattr(image, "text"):
            value = image.text.get("parameters")
    return value if isinstance(value, str) else None
