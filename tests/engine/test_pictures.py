"""engine/pictures.py on real files: formats, header-checked sizes, EXIF, 16-bit, alpha, GIF frames."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine import bounds, pictures


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A real 1-bit grey PNG of ``width``×``height`` (all black): a few KB that decode to width*height."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def _pixel(picture: pictures.Picture, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(picture.png)) as image:
        assert image.mode == "RGB" and image.format == "PNG"
        return image.getpixel(xy)


def test_a_small_file_of_a_huge_picture_is_refused_from_its_header() -> None:
    data = _bomb_png(12000, 12000)
    assert len(data) < 64 * 1024  # a few KB on the wire, 144 megapixels decoded
    with pytest.raises(pictures.PictureError, match=r"12000×12000; the most is 8192 pixels per side"):
        pictures.normalize(data)


def test_a_png_declaring_an_absurd_size_is_refused() -> None:
    # Pillow's own bomb check fires on this one before ours; the member still gets our words.
    data = _bomb_png(200_000, 200_000, rows=1)
    with pytest.raises(pictures.PictureError, match="the most is 8192 pixels per side"):
        pictures.normalize(data)
    wide = _bomb_png(bounds.PICTURE_SIDE + 8, 2)  # few pixels, one side too long
    with pytest.raises(pictures.PictureError, match=f"{bounds.PICTURE_SIDE + 8}×2"):
        pictures.normalize(wide)


def test_eps_and_other_formats_are_refused_before_pillow_sees_them() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n"
    for data in (eps, _save(Image.new("RGB", (8, 8)), "BMP"), _save(Image.new("RGB", (8, 8)), "TIFF"), b""):
        with pytest.raises(pictures.PictureError, match="PNG, JPEG, WebP or GIF"):
            pictures.normalize(data)


def test_a_picture_claiming_one_format_but_holding_another_is_refused() -> None:
    fake = b"\x89PNG\r\n\x1a\n" + _save(Image.new("RGB", (8, 8)), "BMP")
    with pytest.raises(pictures.PictureError, match="couldn't read that file as a PNG"):
        pictures.normalize(fake)


def test_too_many_bytes_are_refused_naming_the_limit() -> None:
    with pytest.raises(pictures.PictureError, match="the most is 10 MiB"):
        pictures.normalize(b"\x89PNG\r\n\x1a\n" + b"\x00" * bounds.UPLOAD_BYTES)


def test_sixteen_bit_grey_keeps_its_tone() -> None:
    grey = Image.fromarray(np.full((16, 16), 30000, dtype=np.uint16))  # mid grey in 16 bits
    data = _save(grey, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    r, g, b = _pixel(pictures.normalize(data))
    assert r == g == b and abs(r - 30000 / 257) <= 1  # 117, not clipped to white


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # what most editors save for "transparent"
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    picture = pictures.normalize(_save(rgba, "PNG"))
    assert _pixel(picture) == (255, 255, 255)
    assert _pixel(picture, (1, 1)) == (255, 0, 0)
    half = pictures.normalize(_save(Image.new("LA", (4, 4), (0, 128)), "PNG"))
    assert all(abs(c - 127) <= 1 for c in _pixel(half))  # half-transparent black on white: mid grey
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    assert _pixel(pictures.normalize(_save(palette, "PNG", transparency=0))) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view", what phones write when held upright
    picture = pictures.normalize(_save(image, "JPEG", exif=exif, quality=95))
    assert (picture.width, picture.height) == (32, 64)
    top, bottom = _pixel(picture, (16, 8)), _pixel(picture, (16, 56))
    assert top[0] > 200 and top[2] < 60  # red on top after the turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 2
    r, _, b = _pixel(pictures.normalize(data))
    assert r > 200 and b < 60


def test_webp_and_a_big_photo_are_accepted_and_scaled_to_the_output_bound() -> None:
    assert _pixel(
        pictures.normalize(_save(Image.new("RGB", (8, 8), (0, 255, 0)), "WEBP", lossless=True))
    ) == (
        0,
        255,
        0,
    )
    photo = _save(Image.new("RGB", (3000, 2000), (10, 200, 30)), "JPEG")
    picture = pictures.normalize(photo)
    assert picture.width * picture.height <= bounds.PIXELS.hi
    assert abs(picture.width / picture.height - 1.5) < 0.01  # same shape
