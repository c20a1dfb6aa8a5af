"""LoRAs as A1111 users write them: <lora:name:weight> tags, a LoRA folder, batches split by LoRA set.

The LoRA is engine.tiny.make_tiny_lora's: random low-rank weights on the tiny model's attention layers,
saved by diffusers as a .safetensors file, so applying it visibly changes the picture.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from engine import loras
from engine.protocol import JobDone, JobFailed

from .conftest import request
from .outputs import assert_same_image, pixels, unet_outputs


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import make_tiny_lora

    folder = tmp_path_factory.mktemp("Lora")
    (folder / "styles").mkdir()
    make_tiny_lora(folder / "styles" / "Ink.safetensors")
    # The same LoRA pickled (tensors only: the safe unpickler reads it), and a pickle that would run code.
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "styles" / "Ink.safetensors")), folder / "InkPt.pt")
    torch.save({"x": _RunsCode(folder / "PWNED")}, folder / "unsafe.ckpt")
    return folder


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def lora_runner(tiny_model: Path, lora_dir: Path):
    from engine.runner import Runner

    r = Runner(tiny_model, device="cpu", max_batch=4, lora_dir=lora_dir)
    yield r
    r.close()


# The text after the tags are cut is A1111's (modules/extra_networks.py parse_prompt: each tag alone is
# replaced by ""), and the weights are its LoRA extension's (te, then unet defaulting to te; te=/unet=).
@pytest.mark.parametrize(
    ("prompt", "text", "found"),
    [
        ("a cat <lora:Ink:0.8>", "a cat ", (("Ink", 0.8, 0.8),)),
        ("<lora:Ink>, a cat", ", a cat", (("Ink", 1.0, 1.0),)),
        ("a cat,<lora:Ink>, dog", "a cat,, dog", (("Ink", 1.0, 1.0),)),
        ("a <lora:ink:0.5> cat <lora:ink:0.25>", "a  cat ", (("ink", 0.75, 0.75),)),
        # One file whatever the case (LoraLibrary.resolve): one LoRA, spelled as first written.
        ("a <lora:ink:0.5> cat <lora:INK:0.25>", "a  cat ", (("ink", 0.75, 0.75),)),
        ("a cat <lora:Ink:0.6:0.2>", "a cat ", (("Ink", 0.6, 0.2),)),
        ("a cat <lora:Ink:te=0.5:unet=1>", "a cat ", (("Ink", 0.5, 1.0),)),
        ("a cat <lora:Ink:unet=0.3>", "a cat ", (("Ink", 1.0, 0.3),)),
        ("a cat <lora:Ink:0.7:unet=0.2>", "a cat ", (("Ink", 0.7, 0.2),)),
        ("a cat <lora:Ink:te=0.4>", "a cat ", (("Ink", 0.4, 0.4),)),
        ("<lyco:Ink:0.5>a cat\n<lora:B>", "a cat\n", (("B", 1.0, 1.0), ("Ink", 0.5, 0.5))),
        ("(a cat:1.2) <lora:Ink:1> BREAK dog", "(a cat:1.2)  BREAK dog", (("Ink", 1.0, 1.0),)),
        ("a cat, no tags", "a cat, no tags", ()),
        ("a <cat> and <3 and <lora >", "a <cat> and <3 and <lora >", ()),
        # Other types are cut and skipped, as A1111 does: in Discord, animated emoji and timestamps.
        ("a cat <a:party:123> at <t:1700000000:R>", "a cat  at ", ()),
    ],
)
def test_tags_are_taken_out_of_the_prompt_as_a1111_does(prompt, text, found):
    assert loras.extract(prompt) == (text, found)


@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        ("a cat <lora:Ink:x>", r"'x' in '<lora:Ink:x>' is not a number"),
        ("a cat <lora:Ink:te=x>", r"'x' in '<lora:Ink:te=x>' is not a number"),
        ("a cat <hypernet:anime:1>", r"hypernetworks are not supported here; remove '<hypernet:anime:1>'"),
        ("a cat <lora:Ink:1:1:8>", r"dyn \(LyCORIS rank\) argument is not supported"),
        ("a cat <lora:Ink:dyn=8>", r"dyn \(LyCORIS rank\) argument is not supported"),
        ("a cat <lora:Ink:in=1>", r"unknown LoRA argument in="),
        ("a cat <lora:te=1>", r"does not name a LoRA"),
        # The bound holds for the file, not for each spelling of its name.
        (
            "<lora:ink:60> a cat <lora:INK:60>",
            r"LoRA 'ink' has a weight of 120; it must be between -100 and 100",
        ),
    ],
)
def test_tags_this_engine_cannot_apply_are_refused_with_a_reason(prompt, error):
    with pytest.raises(loras.LoraError, match=error):
        loras.extract(prompt)


def assert_lora_changes_the_unet(plain, styled) -> None:
    # The LoRA's random low-rank weights move the noise prediction by a share of its own size; how far
    # that moves the 8-bit picture depends on the random weights and the CPU (tests/engine/outputs.py).
    assert (styled - plain).abs().mean() > 0.01 * plain.abs().mean(), (styled - plain).abs().mean()


def test_a_lora_changes_the_unet_and_weight_zero_does_not(lora_runner, lora_dir):
    r = lora_runner
    with unet_outputs(r.pipe) as predicted:
        plain = r.run([request("plain", prompt="a cat", seed=5)])["plain"]
        styled = r.run([request("styled", prompt="a cat <lora:Ink:1>", seed=5)])["styled"]
        zero = r.run([request("zero", prompt="a cat <lora:ink:0>", seed=5)])["zero"]  # names match any case
        after = r.run([request("after", prompt="a cat", seed=5)])["after"]  # the LoRA is off again
    assert all(isinstance(e, JobDone) for e in (plain, styled, zero, after))
    first = predicted[:: len(predicted) // 4]  # each run's first UNet call: same seed, same latents in
    assert len(predicted) % 4 == 0 and len(first) == 4
    assert_lora_changes_the_unet(first[0], first[1])
    torch.testing.assert_close(first[2], first[0])
    torch.testing.assert_close(first[3], first[0])
    assert_same_image(pixels(plain, 0), pixels(zero, 0))
    assert_same_image(pixels(plain, 0), pixels(after, 0))
    # A1111 keeps the tag in the PNG info's prompt, so the picture can be made again from it, and names the
    # file by its hash ("Lora hashes"): SHA-256 of the tensor data after the safetensors JSON header.
    from engine.pnginfo import parse_parameters, read_png_parameters

    text = read_png_parameters(styled.images[0].png)
    assert text is not None and text.startswith("a cat <lora:Ink:1>")
    data = next(lora_dir.rglob("Ink.safetensors")).read_bytes()
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    assert parse_parameters(text)["Lora hashes"] == f"Ink: {expected}"
    assert "Lora hashes" not in parse_parameters(read_png_parameters(plain.images[0].png) or "")


def test_named_weights_and_pickled_loras_reach_the_unet(lora_runner):
    # The tiny LoRA has UNet layers only: te= changes nothing, unet= is its weight. The pickled copy of it
    # loads through the safe unpickler without any opt-in and acts the same.
    r = lora_runner
    prompts = ["a cat", "a cat <lora:Ink:1>", "a cat <lora:Ink:te=0.3:unet=1>", "a cat <lora:Ink:1:0>"]
    prompts.append("a cat <lyco:InkPt:1>")
    with unet_outputs(r.pipe) as predicted:
        done = [r.run([request(f"w{i}", prompt=p, seed=5)])[f"w{i}"] for i, p in enumerate(prompts)]
    assert all(isinstance(e, JobDone) for e in done), done
    plain, styled, named, unet_off, pickled = predicted[:: len(predicted) // len(prompts)]
    assert_lora_changes_the_unet(plain, styled)
    torch.testing.assert_close(named, styled)
    torch.testing.assert_close(unet_off, plain)
    torch.testing.assert_close(pickled, styled)


def test_requests_with_different_loras_never_share_a_batch(lora_runner):
    r = lora_runner
    reqs = [
        request("p", prompt="a dog", seed=7),
        request("s", prompt="a dog <lora:Ink:0.7>", seed=8),
        request("p2", prompt="a dog", seed=9),
    ]
    alone = {q.job_id: r.run([q])[q.job_id] for q in reqs}
    calls: list[list[str]] = []
    original = r._call_pipeline

    def spy(items, emit):
        calls.append([job.job_id for job, _ in items])
        return original(items, emit)

    r._call_pipeline = spy
    try:
        together = r.run(reqs)
    finally:
        del r._call_pipeline
    assert sorted(calls) == [["p", "p2"], ["s"]]
    for q in reqs:
        assert_same_image(pixels(alone[q.job_id], 0), pixels(together[q.job_id], 0))


def test_unknown_and_pickled_loras_are_refused_with_a_reason(lora_runner, lora_dir, runner):
    failed = lora_runner.run([request("u", prompt="a cat <lora:nope:1>")])["u"]
    assert isinstance(failed, JobFailed)
    assert failed.reason == "unknown LoRA 'nope'; available: Ink, InkPt, unsafe"
    pickled = lora_runner.run([request("k", prompt="a cat <lora:unsafe>")])["k"]
    assert isinstance(pickled, JobFailed), pickled
    assert f"needs {os.system.__module__}.system" in pickled.reason and "ALLOW_PICKLE" in pickled.reason
    assert not (lora_dir / "PWNED").exists()
    # A worker with no LoRA folder says so instead of drawing the tag as text.
    none = runner.run([request("n", prompt="a cat <lora:Ink>")])["n"]
    assert isinstance(none, JobFailed) and "no LoRA folder" in none.reason


def test_files_added_or_moved_after_a_lookup_are_found(tmp_path: Path):
    library = loras.LoraLibrary(tmp_path)
    with pytest.raises(loras.LoraError, match="unknown LoRA 'late'"):
        library.resolve("late")
    (tmp_path / "late.safetensors").write_bytes(b"x")
    assert library.resolve("late") == tmp_path / "late.safetensors"
    (tmp_path / "sub").mkdir()
    (tmp_path / "late.safetensors").rename(tmp_path / "sub" / "late.safetensors")
    assert library.resolve("LATE") == tmp_path / "sub" / "late.safetensors"


def test_the_lora_folder_defaults_to_a1111s_layout(tiny_model: Path, tmp_path: Path):
    from engine.runner import Runner

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Lora").mkdir()
    r = Runner(tiny_model, device="cpu", models_dir=models / "Stable-diffusion")
    try:
        assert r.loras.folder == models / "Lora"
    finally:
        r.close()


def test_loras_work_on_a_compiled_unet(tiny_model: Path, lora_dir: Path, monkeypatch):
    # --compile wraps the UNet, which hides its layers from diffusers' LoRA code (it once failed with
    # "Adapter name(s) {'lora0'} not in the list of present adapters"). The wrapper is what matters here,
    # not the generated code: the "eager" backend gives the same wrapper without a minute of inductor
    # compiling on CI's CPU (the real backend was checked by hand: same result).
    import torch

    from engine.runner import Runner

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager", **kw))

    r = Runner(tiny_model, device="cpu", max_batch=1, compile=True, warmup=False, lora_dir=lora_dir)
    try:
        with unet_outputs(r.pipe) as predicted:
            plain = r.run([request("p", prompt="a cat", seed=3)])["p"]
            styled = r.run([request("s", prompt="a cat <lora:Ink:1>", seed=3)])["s"]
            again = r.run([request("a", prompt="a cat", seed=3)])["a"]
    finally:
        r.close()
    assert hasattr(r.pipe.unet, "_orig_mod")  # it did run compiled
    assert isinstance(styled, JobDone), styled
    assert len(predicted) % 3 == 0
    first = predicted[:: len(predicted) // 3]
    assert_lora_changes_the_unet(first[0], first[1])
    torch.testing.assert_close(first[2], first[0])
    assert_same_image(pixels(plain, 0), pixels(again, 0))
