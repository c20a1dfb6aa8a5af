"""Prompt editing, alternation and clip skip on the tiny model: which conditioning each UNet call gets.

What the runner guarantees is the text embedding each model call sees (A1111's step rule: call ``s``, from 0,
uses the first schedule entry with ``s <= end_at_step``); how much that moves the tiny random model's 8-bit
picture depends on its weights and the CPU, so steps are checked on the UNet's inputs, and pictures only
where the computation is the same or the difference is many levels (CFG 30)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import conditioning
from engine.prompt_schedule import prompt_schedule
from engine.protocol import JobDone, JobFailed

from .conftest import request
from .outputs import pixels


@pytest.fixture
def unet_context(runner):
    """The ``encoder_hidden_states`` of every UNet call, as (negative rows, positive rows)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    handle = runner.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    yield seen
    handle.remove()


def plain(runner, text: str) -> torch.Tensor:
    """The pipeline's own embedding of ``text`` (1, 77, dim)."""
    return runner.pipe.encode_prompt([text], "cpu", 1, False)[0]


def penultimate(runner, text: str) -> torch.Tensor:
    """A1111's clip skip 2 of ``text``, from the pipeline's own tokenization (diffusers' encode_prompt has a
    clip_skip too, but it reaches for a ``text_model`` that transformers 5's CLIPTextModel no longer has)."""
    pipe = runner.pipe
    ids = pipe.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        return pipe.text_encoder.final_layer_norm(hidden[-2])


def positives(seen: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    return [context[rows:] for context in seen]  # with guidance: [negatives, positives]


def which(context: torch.Tensor, options: dict[str, torch.Tensor]) -> str:
    for name, embed in options.items():
        if torch.allclose(context, embed[0], rtol=0, atol=1e-5):
            return name
    raise AssertionError("a conditioning that is none of the texts")


def test_editing_and_alternation_switch_at_a1111s_steps(runner, unet_context):
    texts = {"cat": plain(runner, "cat"), "dog": plain(runner, "dog")}
    cases = {
        # 4 steps, [cat:dog:0.5]: cat through step 2 (calls 0, 1, 2), dog after.
        "[cat:dog:0.5]": ["cat", "cat", "cat", "dog"],
        "[cat:dog:1]": ["cat", "cat", "dog", "dog"],
        "[cat:dog:99]": ["cat"] * 4,  # past the last step: never switches
        # [cat|dog]: entries end at 1, 2, 3, 4, so calls 0 and 1 both take the first.
        "[cat|dog]": ["cat", "cat", "dog", "cat"],
        "[dog:cat:0]": ["cat"] * 4,  # at step 0: "after" from the start
    }
    for prompt, expected in cases.items():
        unet_context.clear()
        assert isinstance(runner.run([request("e", prompt=prompt, steps=4)])["e"], JobDone)
        got = [which(row[0], texts) for row in positives(unet_context, 1)]
        assert got == expected, prompt


def test_each_job_of_a_batch_keeps_its_own_schedule(runner, unet_context):
    texts = {"cat": plain(runner, "cat"), "dog": plain(runner, "dog"), "": plain(runner, "")}
    results = runner.run(
        [
            request("a", prompt="[cat:dog:1]", steps=3, seed=1),
            request("b", prompt="[dog|cat]", negative_prompt="[:cat:1]", steps=3, seed=2),
        ]
    )
    assert all(isinstance(event, JobDone) for event in results.values())
    assert len(unet_context) == 3 and unet_context[0].shape[0] == 4  # one batch: 2 negatives, 2 positives
    per_call = [[which(row, texts) for row in context] for context in unet_context]
    # Rows: negative a, negative b, positive a, positive b.
    assert per_call == [
        ["", "", "cat", "dog"],
        ["", "", "cat", "dog"],
        ["", "cat", "dog", "cat"],
    ]


def test_edit_past_the_last_step_gives_the_plain_prompts_picture(runner):
    # Not the same code path (embeddings, not prompt=), so equal up to the rounding of another encoder batch.
    edited = pixels(runner.run([request("x", prompt="[cat:dog:99]", steps=20, seed=7)])["x"])
    cat = pixels(runner.run([request("y", prompt="cat", steps=20, seed=7)])["y"])
    assert np.abs(edited.astype(int) - cat.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("prompt", "sampler", "steps"),
    [
        # On the tiny random model the second half of a Karras or uniform schedule hardly moves the picture
        # (its text effect shrinks with sigma); DDIM's last steps still shape it, so the switch shows there.
        ("[cat:dog:0.5]", "DDIM", 10),
        ("[cat|dog]", "DPM++ 2M", 20),
    ],
)
def test_an_edit_halfway_and_an_alternation_each_give_a_picture_of_their_own(runner, prompt, sampler, steps):
    # A high CFG makes the text's share of the picture large: the mean differences asked for here measured
    # 2.5 to 35 levels in 8 bits, where another CPU's rounding moves a pixel by one level at most.
    def picture(text: str) -> np.ndarray:
        job = request("p", prompt=text, steps=steps, seed=7, cfg_scale=30.0, sampler=sampler)
        return pixels(runner.run([job])["p"]).astype(int)

    mixed, cat, dog = picture(prompt), picture("cat"), picture("dog")
    for plain_picture in (cat, dog):
        assert np.abs(mixed - plain_picture).mean() > 0.5, prompt


def test_clip_skip(runner):
    pipe = runner.pipe
    texts = ["a photo of a cat"]
    one = conditioning.encode_conditioning(pipe, texts, [""], "cpu", torch.float32, clip_skip=1, force=True)
    two = conditioning.encode_conditioning(pipe, texts, [""], "cpu", torch.float32, clip_skip=2, force=True)
    assert one is not None and two is not None
    # Clip skip 1 (and the default 0) is the pipeline's own encoding.
    torch.testing.assert_close(one.at(0)[0], plain(runner, texts[0]), rtol=0, atol=1e-6)
    # Clip skip 2: the penultimate layer's output through the final layer norm.
    torch.testing.assert_close(two.at(0)[0], penultimate(runner, texts[0]), rtol=0, atol=1e-6)
    assert (two.at(0)[0] - one.at(0)[0]).abs().max() > 0.1 * one.at(0)[0].abs().mean()


def test_clip_skip_reaches_the_unet_for_a_plain_prompt(runner, unet_context):
    assert isinstance(runner.run([request("c", prompt="cat", steps=1, clip_skip=2)])["c"], JobDone)
    torch.testing.assert_close(unet_context[0][1:], penultimate(runner, "cat"), rtol=0, atol=1e-6)


def _nested_edits(depth: int) -> str:
    text = "a"
    for i in range(1, depth + 1):  # [[[a:w1:1]:w2:2]:w3:3]...: one more text per level
        text = f"[{text}:w{i}:{i}]"
    return text


NESTED_EDITS = _nested_edits(20)


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("[a|b][c|d|e][f|g|h|i|j]", "more than 16 different prompts"),
        ("[a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p|q]", "more than 16 different prompts"),
        (NESTED_EDITS, "more than 16 different prompts"),
        ("a cat AND a dog", "AND"),
        ("a cat:1.4", "composable"),
    ],
)
def test_hostile_or_unsupported_prompts_are_refused_before_running(runner, unet_context, prompt, words):
    event = runner.run([request("h", prompt=prompt, steps=150)])["h"]
    assert isinstance(event, JobFailed) and words in event.reason and not event.retryable
    assert not unet_context  # refused at the request check: nothing was encoded or ran


@pytest.mark.parametrize("prompt", ["[" * 1500, "[a|" * 500, "(" * 700 + "[a:b:1]" + ")" * 700])
def test_brackets_nested_past_the_parsers_depth_read_as_plain_text(prompt):
    assert prompt_schedule(prompt, 150) == ((150, prompt),)


def test_editing_on_sdxl_switches_both_encoders_and_the_pooled_embedding(tiny_sdxl_dir):
    from engine.runner import Runner

    runner = Runner(tiny_sdxl_dir, device="cpu", max_batch=2, worker_id="xl-edit")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs):
        context, pooled = kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]["text_embeds"]
        seen.append((context[1:].detach().clone(), pooled[1:].detach().clone()))  # the positive row

    pipe = runner.pipe
    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        done = runner.run([request("x", prompt="[cat:dog:0.5]", negative_prompt="blurry", steps=4)])["x"]
    finally:
        handle.remove()
        runner.close()
    assert isinstance(done, JobDone)
    own = {
        t: pipe.encode_prompt(prompt=[t], device="cpu", negative_prompt=["blurry"]) for t in ("cat", "dog")
    }
    got = []
    for context, pooled in seen:
        for name, (embeds, _, pooled_embeds, _) in own.items():
            if torch.allclose(context, embeds, atol=1e-5) and torch.allclose(
                pooled, pooled_embeds, atol=1e-5
            ):
                got.append(name)
    assert got == ["cat", "cat", "cat", "dog"]


def test_the_texts_of_one_schedule_share_their_emphasis_mean():
    # A1111 encodes a prompt's schedule texts in one call, and "Original" emphasis restores the mean of that
    # whole call: a plain text of the schedule is rescaled too, and each text alone keeps no mean.
    from engine.prompts import apply_emphasis

    z = torch.arange(1, 1 + 2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) / 10
    weights = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    together = apply_emphasis(z, weights, torch.tensor([0, 0]))
    torch.testing.assert_close(together.mean(), z.mean())
    assert not torch.allclose(together[1], z[1])  # the plain text is scaled with its group
    alone = apply_emphasis(z, weights)  # each chunk its own group: the plain one comes back as it was
    assert torch.equal(alone[1], z[1])
    torch.testing.assert_close(alone[0].mean(), z[0].mean())
