"""Request checks (engine/requests.py) are one piece of code for the real Runner and the simulated one: they
refuse the same requests with the same words, and the simulated runner stays torch-free."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine import bounds
from engine.protocol import JobKind
from engine.requests import RequestError
from engine.simulate import SimulatedRunner

from .conftest import request

ROOT = Path(__file__).resolve().parents[2]
TOO_MANY_BREAKS = " BREAK ".join(["a cat"] * (bounds.PROMPT_CHUNKS + 1))


def _png(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


INVALID = {
    "steps 0": {"steps": 0},
    "steps over": {"steps": bounds.STEPS.hi + 1},
    "count 0": {"count": 0},
    "count over": {"count": bounds.COUNT.hi + 1},
    "cfg under": {"cfg_scale": 0.5},
    "cfg nan": {"cfg_scale": float("nan")},
    "sampler": {"sampler": "Euler z"},
    "refused sampler": {"sampler": "Restart"},
    "schedule type": {"scheduler": "Karas"},
    "pair": {"sampler": "DDIM", "scheduler": "Karras"},
    "clip skip": {"clip_skip": bounds.CLIP_SKIP.hi + 1},
    "no init image": {"kind": JobKind.IMG2IMG},
    "undecodable init": {"kind": JobKind.IMG2IMG, "init_image": b"not an image"},
    "strength 0": {"kind": JobKind.IMG2IMG, "init_image": _png(), "strength": 0.0},
    "strength tiny": {"kind": JobKind.UPSCALE, "init_image": _png(), "strength": 0.01},
    "side": {"width": 100_000},
    "pixels": {"width": 4096, "height": 4096},
    "upscale past the pixels": {"kind": JobKind.UPSCALE, "init_image": _png((2048, 1536)), "strength": 0.3},
    "lora without a folder": {"prompt": "a cat <lora:ink:0.8>"},
    "prompt chunks": {"prompt": TOO_MANY_BREAKS},
    "negative chunks": {"negative_prompt": TOO_MANY_BREAKS},
}


@pytest.mark.parametrize("fields", INVALID.values(), ids=INVALID.keys())
def test_simulated_and_real_runners_refuse_alike(runner, fields):
    simulated = SimulatedRunner(0)
    with pytest.raises(RequestError) as real:
        runner.prepare(request("bad", **fields))
    with pytest.raises(RequestError) as sim:
        simulated.prepare(request("bad", **fields))
    assert str(sim.value) == str(real.value)


def test_both_accept_a_valid_request_and_batch_it_alike(runner):
    fields = {"sampler": "euler a", "width": 70, "height": 60, "kind": JobKind.IMG2IMG, "init_image": _png()}
    real = runner.prepare(request("ok", **fields))
    sim = SimulatedRunner(0).prepare(request("ok", **fields))
    # Everything but the model (the simulator loads none) is the same key: the same batches.
    assert sim.key._replace(model=real.key.model) == real.key
    assert (real.key.sampler, real.key.width, real.key.height) == ("Euler a", 72, 64)
    assert sim.init_image is not None and sim.init_image.size == (72, 64)


def test_a_prompt_of_too_many_breaks_is_refused_while_a_model_loads(runner, monkeypatch):
    # While the runner swaps models it has no tokenizer; the BREAKs alone still count (they used to count
    # as one chunk: the prompt was queued, and failed its whole batch when encoded).
    monkeypatch.setattr(runner.slot, "current", None)  # no model on the device: the swap in progress
    with pytest.raises(RequestError, match="over 8 chunks"):
        runner.prepare(request("long", prompt=TOO_MANY_BREAKS))
    job = runner.prepare(request("fine", prompt="a cat BREAK a dog"))
    assert job.key.chunks == 2


def test_importing_the_simulated_runner_does_not_import_torch():
    code = "import engine.simulate, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


class _InUse:
    """A tokenizer the runner thread is busy with: any other thread touching it is the bug."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the pipeline's tokenizer was used outside the runner thread")

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"the pipeline's tokenizer was used outside the runner thread ({name})")


def test_requests_are_counted_without_the_tokenizer_the_runner_encodes_with(runner, monkeypatch):
    # A fast tokenizer keeps padding as state: counted on the reader thread while the runner encoded, a
    # batch's "" negative came out unpadded (2 tokens, not 77) and the whole batch failed.
    long = request("long", prompt=" ".join(["word"] * 100) + " BREAK a cat")
    counted = runner.prepare(long).key.chunks
    monkeypatch.setattr(runner.slot.current.pipe, "tokenizer", _InUse())
    assert runner.prepare(long).key.chunks == counted > 2  # over 75 tokens, and a BREAK
