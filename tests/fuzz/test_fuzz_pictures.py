"""Uploaded pictures, fuzzed: arbitrary bytes and damaged real pictures (truncated, bytes flipped, headers
declaring other sizes) are refused with a clear PictureError or become an 8-bit RGB PNG within the bounds;
never another exception. Inputs stay small (a few KB; declared sizes are only header fields), so memory is
bounded by the picture limits themselves."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from functools import cache

from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.cogs.imagine._cog import _reduce
from bot.jobs.policy import Defaults, Limits, Params, PolicyError, aspect_size, resolve
from engine import bounds, pictures
from engine.jobs import JobBook
from engine.loading import ModelSource
from engine.loras import LoraLibrary
from engine.protocol import GenerateRequest, JobKind
from engine.requests import prepare_job

from .strategies import assert_friendly

SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF87a", b"GIF89a", b"")


def _save(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def _gradient(mode: str, size: tuple[int, int] = (16, 12)) -> Image.Image:
    image = Image.linear_gradient("L").resize(size)
    if mode == "I;16":
        return image.point(lambda v: v * 257, "I").convert("I;16")
    return image.convert(mode)


@cache
def seeds() -> dict[str, bytes]:
    """Small valid pictures of each accepted format in the modes that take their own path in pictures.py."""
    rgba = _gradient("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    palette = _gradient("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: EXIF orientation applies
    frames = [_gradient("RGB"), _gradient("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "png rgb": _save(_gradient("RGB"), "PNG"),
        "png rgba": _save(rgba, "PNG"),
        "png palette+transparency": _save(palette, "PNG", transparency=0),
        "png la": _save(_gradient("LA"), "PNG"),
        "png 16-bit": _save(_gradient("I;16"), "PNG"),
        "png 1-bit": _save(_gradient("1"), "PNG"),
        "jpeg": _save(_gradient("RGB"), "JPEG", quality=80),
        "jpeg grey progressive": _save(_gradient("L"), "JPEG", progressive=True),
        "jpeg cmyk": _save(_gradient("CMYK"), "JPEG"),
        "jpeg exif-rotated": _save(_gradient("RGB"), "JPEG", exif=exif),
        "webp lossy": _save(_gradient("RGB"), "WEBP", quality=50),
        "webp lossless alpha": _save(rgba, "WEBP", lossless=True),
        "webp animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "gif": _save(palette, "GIF"),
        "gif animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
    }


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def declare_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` whose header claims ``width``×``height`` (checksums kept right: only the size lies)."""
    if data.startswith(b"\x89PNG"):
        ihdr = struct.pack(">II", width % 2**32, height % 2**32) + data[24:29]
        return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]
    if data[:3] == b"GIF":
        return data[:6] + struct.pack("<HH", width % 2**16, height % 2**16) + data[10:]
    if data[:3] == b"\xff\xd8\xff":
        for marker in (b"\xff\xc0", b"\xff\xc2"):  # baseline or progressive start of frame
            at = data.find(marker)
            if at != -1:
                dims = struct.pack(">HH", height % 2**16, width % 2**16)
                return data[: at + 5] + dims + data[at + 9 :]
        return data
    if data[12:16] == b"VP8X":  # extended WebP: canvas size minus one, 24 bits each
        dims = ((width - 1) % 2**24).to_bytes(3, "little") + ((height - 1) % 2**24).to_bytes(3, "little")
        return data[:24] + dims + data[30:]
    if data[12:16] == b"VP8 ":  # lossy WebP: 14-bit sizes after the start code
        return data[:26] + struct.pack("<HH", width % 2**14, height % 2**14) + data[30:]
    if data[12:16] == b"VP8L":  # lossless WebP: 14 bits each, minus one, after the signature byte
        bits = ((width - 1) % 2**14) | (((height - 1) % 2**14) << 14)
        return (
            data[:21]
            + (bits | (int.from_bytes(data[21:25], "little") & ~(2**28 - 1))).to_bytes(4, "little")
            + data[25:]
        )
    return data


side = st.one_of(
    st.integers(1, 64),
    st.sampled_from((0, bounds.PICTURE_SIDE, bounds.PICTURE_SIDE + 1, 3051, 3052, 2**14 - 1, 2**16 - 1)),
    st.integers(0, 2**32 - 1),
)


@st.composite
def damaged_picture(draw: st.DrawFn) -> bytes:
    data = bytearray(seeds()[draw(st.sampled_from(sorted(seeds())))])
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(("truncate", "flip", "insert", "size")))
        if what == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif what == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif what == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif what == "size":
            data = bytearray(declare_size(bytes(data), draw(side), draw(side)))
    return bytes(data)


def assert_refused_or_normalized(data: bytes) -> None:
    try:
        picture = pictures.normalize(data)
    except pictures.PictureError as exc:
        assert_friendly(str(exc))
        event("refused")
        return
    event("normalized")
    assert 1 <= picture.width * picture.height <= bounds.PIXELS.hi
    with Image.open(io.BytesIO(picture.png), formats=["PNG"]) as image:
        image.load()
        assert (image.mode, image.size) == ("RGB", (picture.width, picture.height))
        assert not {"exif", "icc_profile", "transparency"} & image.info.keys()
        pixels = image.tobytes()
    # What the bot stores is accepted as it is, by the bot and by the engine (open_rgb on the wire).
    again = pictures.normalize(picture.png)
    assert (again.width, again.height) == (picture.width, picture.height)
    assert pictures.open_rgb(again.png).tobytes() == pixels


@given(st.tuples(st.sampled_from(SIGNATURES), st.binary(max_size=2048)).map(b"".join))
def test_arbitrary_bytes_are_refused_clearly(data):
    assert_refused_or_normalized(data)


@example(declare_size(seeds()["png rgb"], 100_000, 100_000))
@example(declare_size(seeds()["png rgb"], bounds.PICTURE_SIDE, bounds.PICTURE_PIXELS // bounds.PICTURE_SIDE))
@example(declare_size(seeds()["gif animated"], 2**16 - 1, 2**16 - 1))
@example(declare_size(seeds()["jpeg"], 2**16 - 1, 1))
@example(declare_size(seeds()["webp lossless alpha"], 2**14, 2**14))
@given(damaged_picture())
def test_damaged_pictures_are_refused_clearly_or_normalized_within_the_bounds(data):
    assert_refused_or_normalized(data)


def header_size(data: bytes) -> tuple[int, int] | None:
    """The size the header declares, as Pillow reads it; None when Pillow cannot read the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError:
            return (2**31, 2**31)  # past Pillow's own bound, far past ours
        except Exception:
            return None


@given(st.sampled_from(sorted(seeds())), side, side)
def test_a_declared_size_past_the_limits_is_refused_from_the_header(name, width, height):
    data = declare_size(seeds()[name], width, height)
    declared = header_size(data)
    too_big = declared is not None and (
        max(declared) > bounds.PICTURE_SIDE or declared[0] * declared[1] > bounds.PICTURE_PIXELS
    )
    event("declared too big" if too_big else "declared within the limits")
    try:
        pictures.normalize(data)
    except pictures.PictureError as exc:
        assert_friendly(str(exc))
        if too_big:
            assert f"{bounds.PICTURE_SIDE} pixels per side" in str(exc)
        return
    assert declared is not None and not too_big, declared


def test_every_seed_is_accepted_as_it_is():
    # The mutations start from pictures the intake takes: a seed it refused would test nothing.
    for name, data in seeds().items():
        picture = pictures.normalize(data)
        assert (picture.width, picture.height) in ((16, 12), (12, 16)), name


@st.composite
def any_shape_picture(draw: st.DrawFn) -> bytes:
    """A valid picture of any shape up to 300 pixels a side (1×300 included), in an accepted format."""
    size = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    fmt = draw(st.sampled_from(pictures.FORMATS))
    mode = draw(st.sampled_from(("RGB", "L", "RGBA", "P") if fmt != "JPEG" else ("RGB", "L", "CMYK")))
    return _save(Image.new(mode, size, draw(st.integers(0, 255))), fmt)


@settings(max_examples=80)  # each resizes a picture to up to 4 megapixels
@given(any_shape_picture(), st.integers(1, 2048 // 64).map(lambda k: k * 64))
def test_an_accepted_picture_becomes_an_img2img_job_the_engine_takes(data, default_size):
    """/imagine with a picture: normalized, its shape kept at the default pixel count (the cog's rule), then
    the engine's own checks (engine/requests.py) take the job with that picture resized to the job's size."""
    picture = pictures.normalize(data)  # a valid picture of these sizes is always accepted
    w, h = _reduce(picture.width, picture.height)
    aspect = f"{w}:{h}" if max(w, h) / min(w, h) <= 4 else "1:1"
    try:
        width, height = aspect_size(aspect, default_size)
        r = resolve(Params(prompt="a cat", aspect=aspect), Defaults(size=default_size), Limits.table())
    except PolicyError as exc:
        assert_friendly(str(exc))
        return
    assert (r.width, r.height) == (width, height)
    request = GenerateRequest(
        job_id="fuzz", prompt=r.prompt, seed=r.seed, steps=r.steps, width=width, height=height,
        sampler=r.sampler, kind=JobKind.IMG2IMG, strength=r.strength, init_image=picture.png,
    )  # fmt: skip
    job = prepare_job(
        request,
        book=JobBook(),
        resolve_model=lambda _: ModelSource("hub", "m", "m"),
        loras=LoraLibrary(None),
        tokenizer=None,
    )
    assert job.init_image is not None and job.init_image.size == (width, height)
    assert job.init_image.mode == "RGB"
