"""Turning engine PNGs into what Discord shows: a 2×2 grid or a single image. Pillow only, no torch."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from engine import grids, pnginfo

# What Pillow raises for a picture file it cannot decode (truncated, corrupt, not a picture, a bomb).
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def grid(pngs: Sequence[bytes], seeds: Sequence[int] = ()) -> bytes:
    """One image as-is; two side by side; three or four as a 2×2 grid (index order: row by row).

    The engine sends this grid with each result (engine/grids.py); this builds the same one from the saved
    files when a result has none (a redelivery after a restart, a worker of an older version). It carries
    A1111's ``parameters`` text, as A1111's own grids do: the first image's (taken from the first tile that
    has one: a withheld picture's placeholder has none), with every image's seed (``seeds``, in tile
    order), so that A1111's PNG Info reads back what rebuilds the first picture."""
    if not pngs:
        raise ValueError("no images to show")
    if len(pngs) == 1:
        return pngs[0]
    opened = [Image.open(io.BytesIO(p)) for p in pngs]
    text = next((t for t in (i.info.get("parameters") for i in opened) if isinstance(t, str)), None)
    return grids.encode(grids.compose(opened), pnginfo.grid_parameters(text, seeds))


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
    grids.tile_placeholder(width, height).save(out, format="PNG")
    return out.getvalue()
