"""The grid the engine sends with a result (engine/grids.py): the bot posts it as it comes, so it must be
the very picture the bot would build from the saved files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.render import grid as bot_grid
from engine import grids
from engine.pnginfo import read_png_parameters
from engine.protocol import JobDone

from .conftest import request


def _array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_a_result_of_four_comes_with_the_grid_the_bot_would_build_from_its_files(runner):
    done = runner.run([request("g", seed=5, count=4, width=128, height=64)])["g"]
    assert isinstance(done, JobDone) and done.grid is not None
    sheet = _array(done.grid)
    h, w = 64, 128
    assert sheet.shape == (2 * h + grids.GRID_GAP, 2 * w + grids.GRID_GAP, 3)
    for image in done.images:
        r, c = divmod(image.index, 2)
        top, left = r * (h + grids.GRID_GAP), c * (w + grids.GRID_GAP)
        assert np.array_equal(sheet[top : top + h, left : left + w], _array(image.png))
    assert sheet[h : h + grids.GRID_GAP].max() == 0  # the seam
    # A1111's parameters of the first picture, with every seed: as the bot's own grid has them.
    text = read_png_parameters(done.grid)
    assert text is not None and "Seed: 5," in text and 'Seeds: "5, 6, 7, 8"' in text
    assert done.grid == bot_grid([i.png for i in done.images], [i.seed for i in done.images])


def test_one_picture_has_no_grid_and_two_sit_side_by_side(runner):
    res = runner.run([request("one", seed=1), request("two", seed=2, count=2)])
    one, two = res["one"], res["two"]
    assert isinstance(one, JobDone) and one.grid is None
    assert isinstance(two, JobDone) and two.grid is not None
    assert Image.open(io.BytesIO(two.grid)).size == (2 * 64 + grids.GRID_GAP, 64)


def test_a_withheld_picture_is_a_dark_tile_and_all_withheld_is_no_grid():
    tiles = [Image.new("RGB", (8, 8), (250, 10, 10)), Image.new("RGB", (8, 8), (10, 250, 10))]
    png = grids.grid_png(tiles, [False, True], None, [1, 2])
    assert png is not None
    sheet = _array(png)
    assert tuple(sheet[0, 0]) == (250, 10, 10)
    assert tuple(sheet[0, 8 + grids.GRID_GAP]) == (32, 32, 32)  # not the green picture
    assert grids.grid_png(tiles, [True, True], None, [1, 2]) is None
    assert grids.grid_png(tiles[:1], [False], None, [1]) is None
