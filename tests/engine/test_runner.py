"""The runner in-process on the tiny model: seeds, batching, chunks, cancel, OOM, img2img, upscale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.pnginfo import parse_parameters, read_png_parameters
from engine.protocol import JobCancelled, JobDone, JobFailed, JobKind, JobProgress, JobStarted

from .conftest import request
from .outputs import assert_same_image, pixels


def png_for_init(size=(64, 64), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_image_and_seed_plus_i(runner):
    first = runner.run([request("a", seed=7, count=2)])["a"]
    again = runner.run([request("a", seed=7, count=2)])["a"]
    assert isinstance(first, JobDone) and [i.seed for i in first.images] == [7, 8]
    for i in range(2):  # the very same call (inputs, batch, process): the same floats, bit for bit
        assert np.array_equal(pixels(first, i), pixels(again, i))
    with pytest.raises(AssertionError):  # another seed is another picture, far outside the rounding bound
        assert_same_image(pixels(first, 0), pixels(first, 1))
    # image 1 of seed 7 is image 0 of seed 8
    alone = runner.run([request("b", seed=8)])["b"]
    assert_same_image(pixels(first, 1), pixels(alone, 0))


def test_batched_requests_equal_their_results_alone(runner):
    a = request("a", prompt="a cat", seed=10, count=2, sampler="Euler a")
    b = request("b", prompt="a dog", negative_prompt="blurry", seed=99, count=2, sampler="Euler a")
    alone_a = runner.run([a])["a"]
    alone_b = runner.run([b])["b"]
    calls = []
    original = runner._call_pipeline

    def spy(items, emit):
        calls.append([(job.job_id, i) for job, i in items])
        return original(items, emit)

    runner._call_pipeline = spy
    try:
        both = runner.run([a, b])
    finally:
        del runner._call_pipeline
    assert calls == [[("a", 0), ("a", 1), ("b", 0), ("b", 1)]]  # one UNet batch of 4
    for i in range(2):
        assert_same_image(pixels(alone_a, i), pixels(both["a"], i))
        assert_same_image(pixels(alone_b, i), pixels(both["b"], i))


def test_plan_batches_by_key_priority_and_chunks(runner):
    jobs = [
        runner.prepare(request("big", count=6)),
        runner.prepare(request("other-size", width=128)),
        runner.prepare(request("small", count=2)),
        runner.prepare(request("urgent", width=128, priority=5)),
    ]
    try:
        first = runner.plan(jobs)
        assert [(j.job_id, ix) for j, ix in first] == [("urgent", [0]), ("other-size", [0])]
        second = runner.plan(jobs)
        assert [(j.job_id, ix) for j, ix in second] == [("big", [0, 1, 2, 3])]  # "small" does not fit
        third = runner.plan(jobs)
        assert [(j.job_id, ix) for j, ix in third] == [("big", [4, 5]), ("small", [0, 1])]
        assert runner.plan(jobs) == []
    finally:
        for job in jobs:
            job.running = False


def test_request_larger_than_max_batch_runs_in_chunks(runner):
    events = []
    done = runner.run([request("c", count=6, steps=2, seed=3)], on_event=events.append)["c"]
    assert isinstance(done, JobDone) and [i.index for i in done.images] == list(range(6))
    assert [i.seed for i in done.images] == [3, 4, 5, 6, 7, 8]
    steps = [e.step for e in events if isinstance(e, JobProgress)]
    assert steps == sorted(steps) and steps[-1] == 2
    assert sum(isinstance(e, JobStarted) for e in events) == 1


def test_cancel_mid_run_stops_within_a_step(runner):
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, JobProgress) and event.step == 2:
            runner.cancel_id("x")

    result = runner.run([request("x", steps=50)], on_event=on_event)["x"]
    assert isinstance(result, JobCancelled)
    steps = [e.step for e in events if isinstance(e, JobProgress)]
    assert max(steps) <= 3
    assert not runner.cancel_id("x")  # finished: nothing to cancel
    assert isinstance(runner.run([request("y")])["y"], JobDone)  # the slot is free again


def test_cancel_one_job_of_a_batch_keeps_the_other(runner):
    def on_event(event):
        if isinstance(event, JobProgress) and event.job_id == "a" and event.step == 1:
            runner.cancel_id("a")

    res = runner.run([request("a", steps=3), request("b", steps=3)], on_event=on_event)
    assert isinstance(res["a"], JobCancelled)
    assert isinstance(res["b"], JobDone) and len(res["b"].images) == 1


def test_oom_splits_the_batch_and_results_match(runner, monkeypatch):
    a, b = request("a", seed=1, count=2), request("b", seed=50, count=2)
    alone = runner.run([a, b])
    calls = []
    original = runner._call_pipeline

    def spy(items, emit):
        calls.append(len(items))
        return original(items, emit)

    monkeypatch.setattr(runner, "_call_pipeline", spy)
    monkeypatch.setattr(runner, "oom_above", 1)
    split = runner.run([a, b])
    assert calls == [4, 2, 1, 1, 2, 1, 1]
    for job_id in ("a", "b"):
        assert isinstance(split[job_id], JobDone)
        for i in range(2):
            assert_same_image(pixels(alone[job_id], i), pixels(split[job_id], i))


def test_oom_of_a_single_image_fails_only_that_request(runner, monkeypatch):
    monkeypatch.setattr(runner, "oom_above", 1)
    res = runner.run([request("huge", width=128, count=2), request("fine", seed=5)])
    assert isinstance(res["fine"], JobDone)
    monkeypatch.setattr(runner, "oom_above", 0)
    res = runner.run([request("huge", width=128)])
    assert isinstance(res["huge"], JobFailed)
    assert "out of GPU memory" in res["huge"].reason and "128x64" in res["huge"].reason
    monkeypatch.setattr(runner, "oom_above", None)
    assert isinstance(runner.run([request("after")])["after"], JobDone)


def test_oom_env_hook(tiny_model, monkeypatch):
    from engine.runner import Runner

    monkeypatch.setenv("ENGINE_TEST_OOM_ABOVE", "3")
    r = Runner(tiny_model, device="cpu")
    try:
        assert r.oom_above == 3
    finally:
        r.close()


def test_img2img_keeps_size_and_records_strength(runner):
    init = png_for_init((64, 96))
    req = request("v", kind=JobKind.IMG2IMG, init_image=init, strength=0.5, steps=4, width=64, height=96)
    events = []
    done = runner.run([req], on_event=events.append)["v"]
    assert isinstance(done, JobDone)
    assert Image.open(io.BytesIO(done.images[0].png)).size == (64, 96)
    assert [e.total for e in events if isinstance(e, JobProgress)][-1] == 2  # steps x strength
    info = parse_parameters(read_png_parameters(done.images[0].png))
    assert info["Denoising strength"] == "0.5"
    assert (info["Size-1"], info["Size-2"]) == ("64", "96")


def test_upscale_doubles_the_init_image(runner):
    init = png_for_init((64, 64))
    req = request("u", kind=JobKind.UPSCALE, init_image=init, strength=0.35, steps=3, width=64, height=64)
    done = runner.run([req])["u"]
    assert isinstance(done, JobDone)
    assert Image.open(io.BytesIO(done.images[0].png)).size == (128, 128)
    info = parse_parameters(read_png_parameters(done.images[0].png))
    assert info["Hires upscale"] == "2" and info["Denoising strength"] == "0.35"
    # the bot sends the 2x target size itself: same result
    req2 = request("u2", kind=JobKind.UPSCALE, init_image=init, strength=0.35, steps=3, width=128, height=128)
    assert Image.open(io.BytesIO(runner.run([req2])["u2"].images[0].png)).size == (128, 128)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"steps": 0}, "steps"),
        ({"count": 0}, "count"),
        ({"sampler": "Euler z"}, "valid samplers"),
        ({"kind": JobKind.IMG2IMG}, "init image"),
        ({"kind": JobKind.IMG2IMG, "init_image": b"not an image"}, "could not be decoded"),
        ({"kind": JobKind.IMG2IMG, "init_image": b"x", "strength": 0.0}, "strength"),
        ({"width": 100000}, "limit"),
        ({"model": "nope"}, "not found"),
    ],
)
def test_bad_requests_fail_with_a_clear_reason(runner, fields, reason):
    res = runner.run([request("bad", **fields)])["bad"]
    assert isinstance(res, JobFailed) and reason in res.reason and not res.retryable


def test_previews_are_small_images(runner):
    events = []
    runner.run([request("p", steps=4, preview_every=2, width=128, height=128)], on_event=events.append)
    previews = [e.preview for e in events if isinstance(e, JobProgress) and e.preview]
    assert len(previews) == 1  # step 2 (step 4 is the final image)
    img = Image.open(io.BytesIO(previews[0]))
    assert img.size == (32, 32) and len(previews[0]) < 20_000  # 2x the 16x16 latent


def test_png_info_in_every_image(runner):
    done = runner.run(
        [request("i", prompt="a lighthouse, oil", negative_prompt="blurry", seed=5, cfg_scale=6.5)]
    )
    info = parse_parameters(read_png_parameters(done["i"].images[0].png))
    assert info["Prompt"] == "a lighthouse, oil" and info["Negative prompt"] == "blurry"
    assert info["Steps"] == "2" and info["CFG scale"] == "6.5"
    assert (info["Sampler"], info["Schedule type"]) == ("DPM++ 2M", "Karras")  # the default, as A1111 1.10
    assert info["Seed"] == "5" and info["Model"] == "tiny"


def test_low_strength_runs_at_least_one_step(runner):
    events = []
    init = png_for_init((64, 64))
    req = request("low", kind=JobKind.UPSCALE, init_image=init, strength=0.35, steps=2, preview_every=1)
    done = runner.run([req], on_event=events.append)["low"]
    assert isinstance(done, JobDone)
    assert [e.total for e in events if isinstance(e, JobProgress)] == [1]
