"""The messages between the bot and the engine, and their wire format (with ``sampler_names``,
``pnginfo`` and ``loras``, the only engine modules the bot imports).

It imports nothing heavy (no torch, no discord) so the bot can use it without loading the GPU stack.

Wire format of one message (a *frame*)::

    u32 big-endian: length of everything after this field
    u32 big-endian: length of the JSON header
    JSON header (UTF-8): {"t": "<MessageType>", "d": {...fields...}, "b": [len0, len1, ...]}
    raw blobs, back to back, in the order listed in "b"

Every ``bytes`` field (PNG images, previews, init images) travels as a raw blob and appears in the JSON as
``{"$b": index}``: images are never base64-inflated. Nested dataclasses carry their type in ``"$t"``.
The same bytes (without the outer length) serve as a NATS message body, see :func:`encode`/:func:`decode`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any

from engine.sampler_names import DEFAULT_SAMPLER
from engine.wire_checks import REASON_CHARS, check_fields

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 512 * 1024 * 1024  # a sanity bound: a corrupt length must not allocate the world
_U32 = struct.Struct(">I")


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"  # init_image + strength: variations (V buttons)
    UPSCALE = "upscale"  # 2x resize of init_image, then a low-strength img2img pass (A1111 hires fix)


# --------------------------------------------------------------------------------------------- requests


@dataclass(slots=True)
class GenerateRequest:
    """One job as the engine sees it. Image ``i`` of the job uses seed ``seed + i`` (A1111's rule)."""

    job_id: str
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    count: int = 1
    sampler: str = DEFAULT_SAMPLER
    model: str | None = None  # None: the worker's default model; else a name from MODELS_DIR
    kind: JobKind = JobKind.TXT2IMG
    strength: float = 0.75
    init_image: bytes | None = None  # PNG/JPEG/WebP bytes for img2img and upscale
    priority: int = 0
    preview_every: int = 0  # send a preview image every N steps; 0: none
    safety_check: bool = False  # run the configured safety checker (channels not marked NSFW)
    # A1111's "Schedule type" (Karras, Exponential, ...); "Automatic" resolves per sampler as A1111 1.10 does.
    scheduler: str = "Automatic"
    # A1111's "Clip skip": 1 uses the text encoder's last layer, 2 the one before; 0: the model's default.
    clip_skip: int = 0

    def __post_init__(self) -> None:
        self.kind = JobKind(self.kind)

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + i) % 2**32 for i in range(self.count)]


@dataclass(slots=True)
class Submit:
    request: GenerateRequest


@dataclass(slots=True)
class Cancel:
    job_id: str


@dataclass(slots=True)
class Shutdown:
    pass


# ----------------------------------------------------------------------------------------------- events


@dataclass(slots=True)
class WorkerReady:
    worker_id: str
    model: str
    device: str
    pid: int
    max_batch: int = 1
    protocol: int = PROTOCOL_VERSION


@dataclass(slots=True)
class JobStarted:
    job_id: str
    worker_id: str = ""


@dataclass(slots=True)
class JobProgress:
    job_id: str
    step: int
    total: int
    preview: bytes | None = None  # small PNG/WebP, a cheap latent->RGB approximation


@dataclass(slots=True)
class ImageResult:
    index: int
    seed: int
    png: bytes
    nsfw: bool = False  # the safety checker flagged it: the bot must not post it


@dataclass(slots=True)
class JobDone:
    job_id: str
    images: list[ImageResult] = field(default_factory=list)
    engine_seconds: float = 0.0
    model: str = ""
    worker_id: str = ""
    # What Discord shows for two or more images: their 2×2 grid (engine/grids.py), built where the pixels
    # already are; None for one image, or when every one was withheld. The bot checks its size before use.
    grid: bytes | None = None


@dataclass(slots=True)
class JobFailed:
    job_id: str
    reason: str
    retryable: bool = False  # True: the worker died or was interrupted, not the request's fault

    def __post_init__(self) -> None:
        # An exception's text can be long; the peer refuses a reason over REASON_CHARS, so cut it here.
        if isinstance(self.reason, str) and len(self.reason) > REASON_CHARS:
            self.reason = self.reason[: REASON_CHARS - 1] + "…"


@dataclass(slots=True)
class JobCancelled:
    job_id: str


Command = Submit | Cancel | Shutdown
Event = WorkerReady | JobStarted | JobProgress | JobDone | JobFailed | JobCancelled
Message = Command | Event

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        GenerateRequest,
        Submit,
        Cancel,
        Shutdown,
        WorkerReady,
        JobStarted,
        JobProgress,
        ImageResult,
        JobDone,
        JobFailed,
        JobCancelled,
    )
}


_MESSAGE_TYPES = (
    Submit, Cancel, Shutdown, WorkerReady, JobStarted, JobProgress, JobDone, JobFailed, JobCancelled
)  # fmt: skip


class ProtocolError(ValueError):
    """A frame that is not a valid message: the peer is broken or not speaking this protocol."""


# ------------------------------------------------------------------------------------------------ codec


class _Packer:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def pack(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            self.blobs.append(bytes(value))
            return {"$b": len(self.blobs) - 1}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out = {f.name: self.pack(getattr(value, f.name)) for f in dataclasses.fields(value)}
            out["$t"] = type(value).__name__
            return out
        if isinstance(value, list | tuple):
            return [self.pack(v) for v in value]
        return value


def _unpack(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if "$b" in value:
            index = value["$b"]
            if len(value) != 1 or type(index) is not int or not 0 <= index < len(blobs):
                raise ProtocolError(f"bad blob reference {value!r:.80}")
            return blobs[index]
        kind = value.pop("$t", None)
        fields = {k: _unpack(v, blobs) for k, v in value.items()}
        if kind is None:
            return fields
        cls = _TYPES.get(kind)
        if cls is None:
            raise ProtocolError(f"unknown message type {kind!r}")
        try:
            # Every field's type, size and range before the object exists: a peer (or anyone who can
            # publish on the broker) must not hand the bot an index like "0/../x" or a 1e9-image job.
            check_fields(cls, fields)
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad {kind}: {exc}") from exc
    if isinstance(value, list):
        return [_unpack(v, blobs) for v in value]
    return value


def encode(message: Message) -> bytes:
    """A message as bytes (header length, JSON header, blobs), without the outer frame length."""
    packer = _Packer()
    header = packer.pack(message)
    header_bytes = json.dumps({"m": header, "b": [len(b) for b in packer.blobs]}).encode()
    return b"".join([_U32.pack(len(header_bytes)), header_bytes, *packer.blobs])


def decode(data: bytes) -> Message:
    """The inverse of :func:`encode`. Raises :class:`ProtocolError` on anything malformed."""
    if len(data) < 4:
        raise ProtocolError("truncated message")
    (header_len,) = _U32.unpack_from(data, 0)
    if 4 + header_len > len(data):
        raise ProtocolError("truncated header")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the limit")
    try:
        # NaN and Infinity are not JSON: refused rather than let through as floats.
        header = json.loads(data[4 : 4 + header_len], parse_constant=_no_constant)
        sizes = header["b"]
        if not isinstance(header, dict) or not isinstance(sizes, list):
            raise TypeError("header is not {m, b}")
        if not all(type(n) is int for n in sizes):
            raise TypeError("blob sizes must be whole numbers")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"bad header: {exc}") from exc
    blobs: list[bytes] = []
    offset = 4 + header_len
    for size in sizes:
        if size < 0 or offset + size > len(data):
            raise ProtocolError("truncated blob")
        blobs.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} stray bytes after the last blob")
    try:
        message = _unpack(header.get("m"), blobs)
    except RecursionError as exc:
        raise ProtocolError("message nested too deeply") from exc
    if not isinstance(message, _MESSAGE_TYPES):
        raise ProtocolError("frame holds no message")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def frame(message: Message) -> bytes:
    body = encode(message)
    return _U32.pack(len(body)) + body


def write_frame(stream: IO[bytes], message: Message) -> None:
    """Blocking write of one frame (the engine worker side, which runs in plain threads)."""
    stream.write(frame(message))
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> Message | None:
    """Blocking read of one frame; ``None`` at a clean end of stream."""
    head = _read_exact(stream, 4)
    if head is None:
        return None
    (size,) = _U32.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes is over the limit")
    body = _read_exact(stream, size)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode(body)


async def read_frame_async(reader: asyncio.StreamReader) -> Message | None:
    """Asyncio read of one frame; ``None`` at a clean end of stream (the bot side)."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame") from exc
        return None
    (size,) = _U32.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes is over the limit")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc
    return decode(body)
