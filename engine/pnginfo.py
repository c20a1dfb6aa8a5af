"""AUTOMATIC1111-compatible PNG ``parameters`` text (``create_infotext`` / ``parse_generation_parameters``).

Torch-free: the bot imports it to show and recall the parameters of an image (the info button) and to
label the posted grid.

Format::

    <prompt, may span lines>
    Negative prompt: <negative prompt>          (omitted when empty)
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768,
    Model hash: ..., Model: ..., <extras...>, Version: ...

The last line is one line of ``Key: value`` pairs joined by ``, ``; values containing ``,`` ``:`` or a
newline are JSON-quoted. :func:`parse_generation_parameters` gives back exactly the dict A1111 1.10's
function of that name gives (its defaults and back-compat rules included, with its default settings);
which fields the engine writes, and why, is in engine/README.md ("PNG info").
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import sampler_names

# Not a PEP 440 version on purpose: A1111 applies its old-version rules (old prompt-editing timelines,
# downcast alphas) to texts whose Version parses as older than its own (_backcompat).
ENGINE_VERSION = "imaginebot-0.1.0"
AUTOMATIC = sampler_names.AUTOMATIC  # A1111's Schedule type that lets the sampler choose

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
    schedule_type: str | None = None,
    extras: Mapping[str, Any] | None = None,
    version: str | None = ENGINE_VERSION,
) -> str:
    """The ``parameters`` text, as A1111's ``create_infotext`` writes it: ``Schedule type`` right after
    ``Sampler``; ``extras`` (e.g. ``{"Denoising strength": 0.75, "Hires upscale": 2}``) after ``Model``;
    ``None`` values are left out."""
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
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
    """A1111's ``parse_generation_parameters`` without its defaults for missing keys: ``Prompt``,
    ``Negative prompt`` and every ``Key: value`` of the last line as strings (a key with an empty value is
    skipped, as in A1111); a ``WxH`` value such as ``Size`` becomes ``Size-1`` (width) and ``Size-2``
    (height), like A1111. The last line counts as parameters only with at least 3 ``Key: value`` pairs."""
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
        if not v:
            continue  # A1111 indexes v[0] inside a try: an empty value raises, and the key is skipped
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


# Keys A1111 1.10's parse_generation_parameters fills in when the text lacks them, with its default
# settings (in its order; Clip skip, Hires resize and Cache FP16 weight are special-cased below).
_A1111_DEFAULTS_BEFORE_OLD_HIRES: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_A1111_DEFAULTS_AFTER_OLD_HIRES: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),  # a text without RNG was made from GPU noise
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)
_RE_VERSION_HEAD = re.compile(r"([^-]+-[^-]+)-.*")


def parse_generation_parameters(text: str) -> dict[str, Any]:
    """Exactly what A1111 1.10's ``parse_generation_parameters`` returns for ``text``, with its default
    settings and no saved styles: :func:`parse_parameters` plus A1111's defaults for missing keys (e.g.
    ``Clip skip`` "1", ``RNG`` "GPU", ``Schedule type`` "Automatic"), its old ``First pass size`` rewrite
    and the flags its ``Version`` back-compat rules add. The conformance tests hold it to A1111's results;
    it is how the tests (and anyone) can tell what an A1111 paste of a text would rebuild."""
    res: dict[str, Any] = dict(parse_parameters(text))
    res.setdefault("Clip skip", "1")  # A1111: missing means 1, its default
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, value in _A1111_DEFAULTS_BEFORE_OLD_HIRES:
        res.setdefault(key, value)
    _restore_old_hires_fix(res)
    for key, value in _A1111_DEFAULTS_AFTER_OLD_HIRES:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    _backcompat(res)
    return res


def _restore_old_hires_fix(res: dict[str, Any]) -> None:
    """Texts of A1111 before 1.0 give the hires first pass as ``First pass size`` and the final one as
    ``Size``; A1111 reads them as the first pass ``Size`` and a ``Hires resize`` (0x0: its old automatic
    first pass of about 512x512 pixels, in multiples of 64)."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    fw, fh = int(first_w), int(first_h)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if fw == 0 or fh == 0:
        scale = math.sqrt(512 * 512 / (width * height))
        fw, fh = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = fw, fh
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _a1111_version(text: str | None) -> Any:
    """A1111's reading of a ``Version`` value: a PEP 440 version, or None when it is not one. The engine's
    own ``imaginebot-x.y.z`` is not, so A1111 applies none of its old-version rules to our texts."""
    if text is None:
        return None
    from packaging.version import InvalidVersion, Version

    head = _RE_VERSION_HEAD.match(text)
    try:
        return Version(head.group(1) if head else text)
    except InvalidVersion:
        return None


def _backcompat(res: dict[str, Any]) -> None:
    """The flags A1111 sets for texts of older versions, so that a paste rebuilds them as they were made."""
    from packaging.version import Version

    version = _a1111_version(res.get("Version"))
    if version is None:
        return
    if version < Version("1.6.0") and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < Version("1.6.0") and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < Version("1.7.0-225"):
        res["Downcast alphas_cumprod"] = True
    if version < Version("1.8.0") and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def grid_parameters(text: str | None, seeds: Sequence[int]) -> str | None:
    """The ``parameters`` text of a grid of one job's images: the first image's, as A1111 writes into its
    grids (``text`` may be any image's of the job: only ``Seed`` differs between them, and is set to
    ``seeds[0]``), plus, for more than one image, ``Seeds`` listing every image's seed in grid order (A1111
    keeps those only in its web page; its paste ignores the unknown key). None without a text."""
    if text is None:
        return None
    head, newline, last = text.strip().rpartition("\n")
    pairs = RE_PARAM.findall(last)
    if len(pairs) < 3 or not seeds:
        return text  # no parameter line to edit
    fields = [(k, str(seeds[0]) if k == "Seed" else v) for k, v in pairs if k != "Seeds"]
    if len(seeds) > 1:
        at = next((i for i, (k, _) in enumerate(fields) if k == "Version"), len(fields))
        fields.insert(at, ("Seeds", quote(", ".join(str(s) for s in seeds))))
    return head + newline + ", ".join(f"{k}: {v}" for k, v in fields)


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
    scheduler: str | None = None  # A1111's Schedule type ("Automatic" when the text names none)
    clip_skip: int | None = None  # 1 when the text has none: A1111 writes it only above 1


def _maybe(kind: type, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return None


def recall_parameters(text: str) -> RecalledParameters:
    """Parse ``text`` with A1111's rules into typed request fields (missing or malformed ones: ``None``).

    As in A1111, a missing ``Clip skip`` is 1 and a missing ``Schedule type`` is Automatic (both only when
    the text has a parameter line at all), and an old combined sampler name (``DPM++ 2M Karras``, before
    A1111 1.9) gives its schedule type unless the text names one (:func:`recall_sampler`)."""
    res = parse_parameters(text)
    has_line = len(res) > 2  # more than Prompt and Negative prompt
    sampler, scheduler = recall_sampler(res.get("Sampler"), res.get("Schedule type"))
    return RecalledParameters(
        prompt=res.get("Prompt", ""),
        negative_prompt=res.get("Negative prompt", ""),
        steps=_maybe(int, res.get("Steps")),
        sampler=sampler,
        cfg_scale=_maybe(float, res.get("CFG scale")),
        seed=_maybe(int, res.get("Seed")),
        width=_maybe(int, res.get("Size-1")),
        height=_maybe(int, res.get("Size-2")),
        model=res.get("Model"),
        strength=_maybe(float, res.get("Denoising strength")),
        scheduler=scheduler if has_line else None,
        clip_skip=_maybe(int, res.get("Clip skip", "1")) if has_line else None,
    )


def recall_sampler(sampler: str | None, schedule_type: str | None) -> tuple[str | None, str]:
    """A1111's reading of ``Sampler`` and ``Schedule type`` (:func:`engine.sampler_names.a1111_reading`):
    a pre-1.9 combined name (``DPM++ 2M Karras``, ``Euler a Exponential``) is split and its schedule type
    wins over the field; a schedule type that is the sampler's own default reads as Automatic, as does a
    missing one. A name the engine does not know is kept as written (the request then says what is valid)."""
    if sampler is None:
        return None, schedule_type or AUTOMATIC
    try:
        sampler_names.canonical_sampler(sampler)
    except sampler_names.UnknownSamplerError:  # A1111 would silently use its default sampler instead
        return sampler, schedule_type or AUTOMATIC
    return sampler_names.a1111_reading(sampler, schedule_type)


def read_png_parameters(data: bytes) -> str | None:
    """The ``parameters`` text of a picture (needs Pillow): a PNG's text chunk, or, as A1111 reads a JPEG
    or WebP, the EXIF ``UserComment``; ``None`` when it has neither."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        value = image.info.get("parameters")
        if value is None and hasattr(image, "text"):
            value = image.text.get("parameters")
        if value is None:
            raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
            if isinstance(raw, bytes) and raw.startswith(_UNICODE):
                value = raw[len(_UNICODE) :].decode("utf-16-be", errors="replace")
    return value if isinstance(value, str) else None


_EXIF_IFD, _USER_COMMENT, _UNDEFINED, _LONG = 0x8769, 0x9286, 7, 4
_UNICODE = b"UNICODE\0"  # the EXIF character-code prefix of a UTF-16 UserComment


def exif_parameters(text: str) -> bytes:
    """EXIF data (for Pillow's ``exif=``, JPEG or WebP) holding ``text`` as A1111 stores its parameters in
    those formats: a UTF-16 ``UserComment`` in the Exif IFD, typed UNDEFINED, as piexif (which A1111 reads
    it with) expects."""
    comment = _UNICODE + text.encode("utf-16-be")
    exif_ifd = 8 + 2 + 12 + 4  # after the TIFF header and IFD0's one entry
    comment_at = exif_ifd + 2 + 12 + 4
    tiff = (
        b"II*\0"
        + struct.pack("<I", 8)
        + struct.pack("<HHHII", 1, _EXIF_IFD, _LONG, 1, exif_ifd)
        + struct.pack("<I", 0)
        + struct.pack("<HHHII", 1, _USER_COMMENT, _UNDEFINED, len(comment), comment_at)
        + struct.pack("<I", 0)
        + comment
    )
    return b"Exif\0\0" + tiff
