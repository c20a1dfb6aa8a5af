"""The engine enforces engine/bounds.py for every request, whatever the bot checked (tiny model, CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine import bounds, prompts
from engine.protocol import JobDone, JobFailed, JobKind, JobProgress
from engine.runner import RequestError

from .conftest import request


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


INIT = _png(Image.new("RGB", (64, 64), (200, 40, 40)))


def test_a_tiny_strength_sent_straight_to_the_engine_is_refused_before_any_step(runner) -> None:
    # Issue #11.1: strength 1e-8 asked diffusers for a 10^8-step schedule, built before the first step
    # callback (Cancel could not stop it). Before the fix this test hangs until pytest's timeout.
    events = []
    req = request("tiny", kind=JobKind.IMG2IMG, init_image=INIT, strength=1e-8, steps=20)
    res = runner.run([req], on_event=events.append)["tiny"]
    assert isinstance(res, JobFailed) and "strength must be between 0.05 and 1" in res.reason
    assert not [e for e in events if isinstance(e, JobProgress)]


def test_the_lowest_strength_runs_a_bounded_schedule(runner) -> None:
    events = []
    req = request("low", kind=JobKind.IMG2IMG, init_image=INIT, strength=bounds.STRENGTH.lo, steps=1)
    res = runner.run([req], on_event=events.append)["low"]
    assert isinstance(res, JobDone)
    totals = [e.total for e in events if isinstance(e, JobProgress)]
    assert totals == [1]  # one denoising step, from a schedule of ceil(1 / 0.05) = 20


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"steps": bounds.STEPS.hi + 1}, "steps must be between 1 and 150"),
        ({"count": bounds.COUNT.hi + 1}, "count must be between 1 and 16"),
        ({"cfg_scale": 31.0}, "cfg_scale must be between 1 and 30"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"width": 4096, "height": 4096}, "4,194,304 pixels"),
        ({"kind": JobKind.IMG2IMG, "init_image": INIT, "strength": 1.5}, "strength"),
        ({"kind": JobKind.IMG2IMG, "init_image": b"%!PS-Adobe-3.0 EPSF-3.0\n"}, "PNG, JPEG, WebP or GIF"),
        ({"prompt": "cat" + " BREAK" * 250}, f"over {bounds.PROMPT_CHUNKS} chunks"),
        ({"negative_prompt": ", " * 700}, f"over {bounds.PROMPT_CHUNKS} chunks"),  # tokens, no BREAK
    ],
)
def test_requests_past_the_bounds_are_refused_before_running(runner, fields, reason) -> None:
    # prepare() alone: nothing of these runs (a 4096² or 151-step job would take minutes on the tiny model).
    with pytest.raises(RequestError) as caught:
        runner.prepare(request("bad", **fields))
    assert reason in str(caught.value)


def test_prompts_stop_tokenizing_at_the_chunk_bound(runner) -> None:
    tokenizer = runner.pipe.tokenizer
    ok = " BREAK ".join(["a cat"] * bounds.PROMPT_CHUNKS)
    assert len(prompts.tokenize_prompt(tokenizer, ok)) == bounds.PROMPT_CHUNKS
    with pytest.raises(prompts.PromptTooLongError):
        prompts.tokenize_prompt(tokenizer, ok + " BREAK more")


def test_init_images_are_normalized_by_the_engine_too(runner) -> None:
    # The wire is untrusted: a 16-bit grey or transparent init image sent straight to the engine keeps
    # its tone and gets a white background (was: white and black).
    grey16 = _png(Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16)))
    job = runner.prepare(request("g", kind=JobKind.IMG2IMG, init_image=grey16, strength=0.5))
    assert job.init_image is not None and abs(job.init_image.getpixel((32, 32))[0] - 117) <= 2
    clear = _png(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    job = runner.prepare(request("t", kind=JobKind.IMG2IMG, init_image=clear, strength=0.5))
    assert job.init_image is not None and job.init_image.getpixel((32, 32)) == (255, 255, 255)
