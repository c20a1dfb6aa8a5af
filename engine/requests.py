"""Request preparation: every check a worker makes on a request before it queues it, and the :class:`Job`
the request becomes.

The request may come from anywhere (the NATS broker is untrusted too), so engine/bounds.py's table is
applied again whatever the bot checked. Torch-free: the real Runner and the simulated one
(engine/simulate.py) both prepare requests here, so they refuse the same requests with the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from engine import bounds, loading, model_catalog, pictures, prompt_schedule, prompts
from engine import embeddings as embeddings_mod
from engine import loras as loras_mod
from engine.jobs import BatchKey, Job, JobBook
from engine.protocol import GenerateRequest, JobKind
from engine.sampler_names import UnknownSamplerError, resolve

UPSCALE_FACTOR = 2


class RequestError(ValueError):
    """A request the engine cannot run as given (bad sampler, size, init image...): fails that request."""


def prepare_job(
    request: GenerateRequest,
    *,
    book: JobBook,
    resolve_model: Callable[[str | None], loading.ModelSource],
    loras: loras_mod.LoraLibrary,
    tokenizer: Any | None,
    embeddings: embeddings_mod.EmbeddingLibrary | None = None,
) -> Job:
    """Check ``request`` into a :class:`Job` of ``book``. Raises :class:`RequestError` with a clear reason.

    ``resolve_model`` maps the request's model name to a source (ModelLoadError for an unknown one);
    ``tokenizer`` counts the prompt's chunks (None: what its BREAKs alone make)."""
    try:
        pair = resolve(request.sampler, request.scheduler)
    except UnknownSamplerError as exc:
        raise RequestError(str(exc)) from exc
    if isinstance(request.clip_skip, bool) or request.clip_skip not in bounds.CLIP_SKIP:
        raise RequestError(
            f"clip_skip must be between {bounds.CLIP_SKIP.lo} and {bounds.CLIP_SKIP.hi}, "
            f"got {request.clip_skip}"
        )
    if request.steps not in bounds.STEPS:
        raise RequestError(f"steps must be between 1 and {bounds.STEPS.hi}, got {request.steps}")
    if request.count not in bounds.COUNT:
        raise RequestError(f"count must be between 1 and {bounds.COUNT.hi}, got {request.count}")
    if request.cfg_scale not in bounds.CFG:
        raise RequestError(
            f"cfg_scale must be between {bounds.CFG.lo:g} and {bounds.CFG.hi:g}, got {request.cfg_scale}"
        )
    try:
        source = resolve_model(request.model)
    except loading.ModelLoadError as exc:
        raise RequestError(str(exc)) from exc
    init: Image.Image | None = None
    strength: float | None = None
    upscale: float | None = None
    width, height = request.width, request.height
    if request.kind != JobKind.TXT2IMG:
        if not request.init_image:
            raise RequestError(f"a {request.kind.value} request needs an init image")
        if request.strength not in bounds.STRENGTH:
            raise RequestError(
                f"strength must be between {bounds.STRENGTH.lo:g} and {bounds.STRENGTH.hi:g}, "
                f"got {request.strength}"
            )
        strength = float(request.strength)
        init = _decode_image(request.init_image)
        if request.kind == JobKind.UPSCALE and width <= init.width and height <= init.height:
            # No larger target given: 2x the init image (the bot sends the 2x size itself).
            width, height = init.width * UPSCALE_FACTOR, init.height * UPSCALE_FACTOR
        if request.kind == JobKind.UPSCALE:
            upscale = round(_round8(width) / init.width, 2)
    width, height = _round8(width), _round8(height)
    if width > bounds.SIDE.hi or height > bounds.SIDE.hi or width * height > bounds.PIXELS.hi:
        raise RequestError(
            f"size {width}x{height} is over the engine's limit of {bounds.SIDE.hi} per side "
            f"and {bounds.PIXELS.hi:,} pixels"
        )
    if init is not None and init.size != (width, height):
        init = init.resize((width, height), Image.Resampling.LANCZOS)
    try:
        text, named = loras_mod.extract(request.prompt)
        # A LoRA of another family is refused here, before the job waits in a queue (and again before
        # any weight changes, by the width of its layers: engine/loras.py).
        family = model_catalog.describe(source.location).family if named and source.kind != "hub" else None
        loras.check(named, family)
    except loras_mod.LoraError as exc:
        raise RequestError(str(exc)) from exc
    try:  # AND and a whole-prompt ":weight" (composable diffusion) are refused here, before the queue
        text = prompt_schedule.composable_text(text)
    except prompt_schedule.PromptScheduleError as exc:
        raise RequestError(str(exc)) from exc
    # Embeddings named in either text: each must load; chunks are counted with their vectors in place.
    used: tuple[str, ...] = ()
    counted: tuple[str, ...] = (text, request.negative_prompt)
    ti_hashes = None
    if embeddings is not None:
        try:
            used = embeddings.find(text, request.negative_prompt)
            embeddings.check(used)
            counted = tuple(embeddings.for_counting(t, used) for t in counted)
            ti_hashes = embeddings.hashes(used)
        except embeddings_mod.EmbeddingError as exc:
            raise RequestError(str(exc)) from exc
    # Chunks of the prompt and of the negative (every text of their editing schedules); RequestError past
    # PROMPT_CHUNKS. The batch runs at the longer; when they differ the shorter is padded (Pad conds).
    prompt_chunks, negative_chunks = (
        chunk_count(tokenizer, *_schedule_texts((t,), request.steps)) for t in counted
    )
    key = BatchKey(
        source.key,
        request.kind,
        width,
        height,
        request.steps,
        pair.sampler,
        float(request.cfg_scale),
        strength,
        max(prompt_chunks, negative_chunks),
        named,
        scheduler=pair.scheduler,
        clip_skip=request.clip_skip,
    )
    return Job(
        request=request,
        key=key,
        source=source,
        prompt=text,
        init_image=init,
        order=book.next_order(),
        upscale=upscale,
        embeddings=used,
        ti_hashes=ti_hashes,
        pad_conds=prompt_chunks != negative_chunks,
    )


def _schedule_texts(texts: tuple[str, ...], steps: int) -> list[str]:
    """Every text the prompt editing of ``texts`` makes over ``steps`` (and twice as many model calls, as a
    second-order sampler makes): all are encoded, so all count; RequestError for too many of them."""
    try:
        found = [prompt_schedule.schedule_texts(text, n) for text in texts for n in (steps, 2 * steps)]
        return list(dict.fromkeys(t for each in found for t in each))
    except prompt_schedule.PromptScheduleError as exc:
        raise RequestError(str(exc)) from exc


def chunk_count(tokenizer: Any | None, *texts: str) -> int:
    """The 77-token chunks the longest of ``texts`` (a prompt and its negative, or every text of their
    editing schedules) encodes to; RequestError past :data:`engine.bounds.PROMPT_CHUNKS`.

    Without a tokenizer (the simulated runner; a real one while it swaps models) the count the BREAKs
    alone make: a prompt of too many BREAKs is refused all the same, instead of failing its whole batch
    when it is encoded."""
    try:
        if tokenizer is not None:
            return prompts.chunk_count(tokenizer, *texts)
        chunks = max(bounds.break_chunks(text) for text in texts)
        if chunks > bounds.PROMPT_CHUNKS:
            raise prompts.PromptTooLongError
        return chunks
    except prompts.PromptTooLongError as exc:
        raise RequestError(str(exc)) from exc


def _round8(value: float) -> int:
    return max(bounds.SIDE.lo, round(value / 8) * 8)


def _decode_image(data: bytes) -> Image.Image:
    # The bot sends a normalized PNG, but the wire is untrusted: the same format, size and mode rules again.
    try:
        return pictures.open_rgb(data)
    except pictures.PictureError as exc:
        raise RequestError(f"init image could not be decoded: {exc}") from exc
