"""What the bot posts of a finished job straight from the engine's result (bot/jobs/files.shown_picture):
the grid only when it is a PNG of the size the job's pictures make. A grid from the broker is untrusted; a
wrong one is ignored, and the bot builds its own from the saved files."""

from __future__ import annotations

import io

from PIL import Image

from bot.db.jobs import SavedImage
from bot.jobs.files import OutputFiles, shown_picture
from bot.render import grid
from engine.grids import GRID_GAP
from engine.protocol import ImageResult, JobDone


def _png(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _event(pngs: list[bytes], grid_png: bytes | None, nsfw: tuple[bool, ...] = ()) -> JobDone:
    flags = nsfw or (False,) * len(pngs)
    pairs = enumerate(zip(pngs, flags, strict=True))
    images = [ImageResult(i, 10 + i, png, flag) for i, (png, flag) in pairs]
    return JobDone("job1", images, 1.0, "m", "w", grid_png)


def _saved(event: JobDone, tmp_path) -> list[SavedImage]:
    return OutputFiles(tmp_path).save_images(event.job_id, (1, 1), event.images)


def test_the_engines_grid_is_used_when_it_fits_the_pictures(tmp_path):
    pngs = [_png((64, 32)) for _ in range(4)]
    sheet = grid(pngs, [10, 11, 12, 13])
    assert Image.open(io.BytesIO(sheet)).size == (2 * 64 + GRID_GAP, 2 * 32 + GRID_GAP)
    event = _event(pngs, sheet)
    assert shown_picture(event, _saved(event, tmp_path)) == sheet


def test_a_grid_of_the_wrong_size_or_not_a_png_is_ignored(tmp_path):
    pngs = [_png((64, 32)) for _ in range(4)]
    for wrong in (_png((9000, 9000 // 128)), b"GIF89a" + b"\0" * 40, grid(pngs[:2])):
        event = _event(pngs, wrong)
        assert shown_picture(event, _saved(event, tmp_path)) is None


def test_one_picture_is_shown_as_it_is_unless_withheld(tmp_path):
    png = _png((64, 64))
    event = _event([png], None)
    assert shown_picture(event, _saved(event, tmp_path)) == png
    withheld = _event([png], None, nsfw=(True,))
    assert shown_picture(withheld, _saved(withheld, tmp_path)) is None
    two = _event([png, png], None)
    assert shown_picture(two, _saved(two, tmp_path)) is None  # no grid sent: the bot builds it
