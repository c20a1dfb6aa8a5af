"""Pictures from outside (a member's upload, an init image on the wire): checked before decoding, then
normalized to plain 8-bit RGB.

Pillow knows some 40 formats, and some run outside code (EPS starts Ghostscript) or decode gigabytes from a
few kilobytes (a 12000×12000 PNG of 17 KB). So, in this order:

1. the format is sniffed from the first bytes and must be PNG, JPEG, WebP or GIF; Pillow is then told to
   try that one plugin only (``formats=``), never to guess;
2. width and height come from the header, and a picture over :data:`engine.bounds.PICTURE_SIDE` or
   :data:`engine.bounds.PICTURE_PIXELS` is refused before a pixel is decoded;
3. decoding: the first frame of an animation, the EXIF orientation applied (phone photos), 16-bit grey
   scaled down (not clipped to white), transparency composited on white (not black).

The bot runs :func:`normalize` on an upload and stores the PNG it returns; the engine runs :func:`open_rgb`
on every init image again, because what arrives over the wire is untrusted too. Pillow only, no torch.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from engine import bounds

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
FORMAT_NAMES = "PNG, JPEG, WebP or GIF"
BACKGROUND = (255, 255, 255)  # what transparent parts become: a white page, as most viewers show them


class PictureError(ValueError):
    """A picture we refuse; the message is friendly, names the limit, and is safe to show the member."""


@dataclass(frozen=True, slots=True)
class Picture:
    png: bytes  # 8-bit RGB PNG, EXIF orientation applied, no metadata
    width: int
    height: int


def sniff(data: bytes) -> str | None:
    """The format of ``data`` from its signature, if it is one we accept; else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _open(data: bytes) -> Image.Image:
    """Open (header only) a picture in an accepted format within the size bounds."""
    if len(data) > bounds.UPLOAD_BYTES:
        raise PictureError(
            f"That picture is {len(data) / 2**20:.1f} MiB; the most is {bounds.UPLOAD_BYTES // 2**20} MiB."
        )
    fmt = sniff(data)
    if fmt is None:
        raise PictureError(f"That file is not a picture I accept; attach a {FORMAT_NAMES}.")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (then errors) far above our bound; ours comes next.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise _too_big(None) from None
    except Exception:
        raise PictureError(f"I couldn't read that file as a {fmt} picture.") from None
    width, height = image.size
    if (
        width < 1
        or height < 1
        or width > bounds.PICTURE_SIDE
        or height > bounds.PICTURE_SIDE
        or width * height > bounds.PICTURE_PIXELS
    ):
        image.close()
        raise _too_big((width, height))
    return image


def _too_big(size: tuple[int, int] | None) -> PictureError:
    given = f"{size[0]}×{size[1]}" if size else "too large"
    return PictureError(
        f"That picture is {given}; the most is {bounds.PICTURE_SIDE} pixels per side and "
        f"{bounds.PICTURE_PIXELS / 1e6:g} megapixels."
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: convert("L") would clip every value above 255 to white. Scale 0..65535 to 0..255.
        image = image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        page = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(page, image).convert("RGB")
    return image.convert("RGB")


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = size
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def open_rgb(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """``data`` decoded as 8-bit RGB (first frame, EXIF-upright, alpha on white); PictureError if refused.

    With ``max_pixels``, a larger picture is scaled down (same shape) to fit; a JPEG is then decoded at a
    reduced scale to begin with (``draft``), which also bounds the memory a big photo takes."""
    image = _open(data)
    try:
        with image:
            image.seek(0)  # the first frame of a GIF or animated WebP
            if max_pixels is not None and image.format == "JPEG":
                image.draft("RGB", _fit(image.size, max_pixels))
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except PictureError:
        raise
    except Exception:
        raise PictureError(f"I couldn't decode that {image.format}; it may be damaged.") from None
    if max_pixels is not None and (fit := _fit(rgb.size, max_pixels)) != rgb.size:
        rgb = rgb.resize(fit, Image.Resampling.LANCZOS)
    return rgb


def normalize(data: bytes) -> Picture:
    """``data`` as an 8-bit RGB PNG without metadata (what the bot stores and the engine gets), at most
    :data:`engine.bounds.PIXELS` large: no job's output is larger, so the engine never decodes more."""
    rgb = open_rgb(data, max_pixels=bounds.PIXELS.hi)
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=1)  # fast: it is decoded again soon, size matters little
    return Picture(out.getvalue(), rgb.width, rgb.height)
