"""Turning engine PNGs into what Discord shows: a 2×2 grid or a single image. Pillow only, no torch."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image

GRID_GAP = 4  # pixels between tiles, like Midjourney's thin seams


def grid(pngs: Sequence[bytes]) -> bytes:
    """One image as-is; two side by side; three or four as a 2×2 grid (index order: row by row)."""
    if not pngs:
        raise ValueError("no images to show")
    if len(pngs) == 1:
        return pngs[0]
    tiles = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    cols = 2
    rows = math.ceil(len(tiles) / cols)
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * GRID_GAP, rows * h + (rows - 1) * GRID_GAP), "black")
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet.paste(tile, (c * (w + GRID_GAP), r * (h + GRID_GAP)))
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()
