"""Turning engine PNGs into what Discord shows: a 2×2 grid or a single image. Pillow only, no torch."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, PngImagePlugin

from engine import pnginfo

GRID_GAP = 4  # pixels between tiles, like Midjourney's thin seams
# What Pillow raises for a picture file it cannot decode (truncated, corrupt, not a picture, a bomb).
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def grid(pngs: Sequence[bytes], seeds: Sequence[int] = ()) -> bytes:
    """One image as-is; two side by side; three or four as a 2×2 grid (index order: row by row).

    The grid carries A1111's ``parameters`` text, as A1111's own grids do: the first image's (taken from
    the first tile that has one: a withheld picture's placeholder has none), with every image's seed
    (``seeds``, in tile order), so that A1111's PNG Info reads back what rebuilds the first picture."""
    if not pngs:
        raise ValueError("no images to show")
    if len(pngs) == 1:
        return pngs[0]
    opened = [Image.open(io.BytesIO(p)) for p in pngs]
    text = next((t for t in (i.info.get("parameters") for i in opened) if isinstance(t, str)), None)
    parameters = pnginfo.grid_parameters(text, seeds)
    tiles = [t.convert("RGB") for t in opened]
    cols = 2
    rows = math.ceil(len(tiles) / cols)
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * GRID_GAP, rows * h + (rows - 1) * GRID_GAP), "black")
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet.paste(tile, (c * (w + GRID_GAP), r * (h + GRID_GAP)))
    out = io.BytesIO()
    # zlib's run-length strategy (Z_RLE = 3), the one libpng suggests for speed: on filtered PNG rows it
    # compresses about as well as the default and runs 10-30 % faster (this grid is on every result's path).
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    sheet.save(out, format="PNG", optimize=False, compress_level=1, compress_type=3, pnginfo=info)
    return out.getvalue()


def fit(png: bytes, limit: int) -> tuple[bytes, str]:
    """The picture in at most ``limit`` bytes, and its file extension.

    A grid of four 1024² images can pass Discord's 10 MiB (or a smaller server's) upload limit; a
    refused upload loses the result, so re-encode smaller instead: WebP at falling quality, then JPEG,
    then halve the size and start over.
    """
    if len(png) <= limit:
        return png, "png"
    opened = Image.open(io.BytesIO(png))
    text = opened.info.get("parameters")
    # The parameters go along, where A1111 keeps them in these formats (EXIF UserComment).
    exif = pnginfo.exif_parameters(text) if isinstance(text, str) else b""
    if len(exif) > 60_000:  # past a JPEG segment's 64 KiB: the picture matters more
        exif = b""
    image = opened.convert("RGB")
    while True:
        for fmt, ext in (("WEBP", "webp"), ("JPEG", "jpg")):
            for quality in (90, 80, 65, 50, 35):
                out = io.BytesIO()
                image.save(out, format=fmt, quality=quality, exif=exif)
                if out.tell() <= limit:
                    return out.getvalue(), ext
        if image.width <= 64 or image.height <= 64:
            raise ValueError(f"cannot fit the picture into {limit} bytes")
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def placeholder(width: int, height: int) -> bytes:
    """A dark tile standing in for a picture that must not be shown (flagged by the safety checker)."""
    out = io.BytesIO()
    Image.new("RGB", (max(1, width), max(1, height)), (32, 32, 32)).save(out, format="PNG")
    return out.getvalue()
