"""A batch's text conditioning, step by step: A1111 prompt editing and alternation
(engine/prompt_schedule.py), emphasis, BREAK, long prompts (engine/prompts.py) and clip skip, as embeddings
the diffusers pipeline takes.

:func:`encode_conditioning` encodes each distinct text of the batch's schedules once. As in A1111:

- the texts of one prompt's schedule are padded with empty chunks to the longest of them and share their
  emphasis means (A1111 encodes them in one call);
- a text is used at model call ``s`` (0-based) by the first schedule entry with ``s <= end_at_step``.

Every row (prompt and negative alike) is then padded with plain empty chunks to the batch's longest, as
A1111's "Pad conds" option does (diffusers runs cond and uncond in one UNet call, which needs one length).

:class:`ScheduleSwap` is the pipeline's ``callback_on_step_end``: after the progress callback it hands the
pipeline the next call's ``prompt_embeds`` (with guidance, diffusers' ``[negative, positive]``) when some
row's schedule moves on. A batch without editing and without clip skip whose texts are plain and short gets
``None``: the runner passes ``prompt=`` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import prompts
from engine.prompt_schedule import entry_at, prompt_schedule

if TYPE_CHECKING:
    import torch

Schedule = tuple[tuple[int, int], ...]  # (end_at_step, index into Conditioning.embeds)


@dataclass
class Conditioning:
    """Embeddings of every schedule entry of a batch, and which entry each row uses when."""

    embeds: torch.Tensor  # (entries, chunks * 77, dim), on the pipeline's device and dtype
    prompt_schedules: list[Schedule]  # per batch row
    negative_schedules: list[Schedule]

    @property
    def static(self) -> bool:
        """True when no row changes its text during the run."""
        return all(len({i for _, i in s}) == 1 for s in (*self.prompt_schedules, *self.negative_schedules))

    def _indices(self, schedules: list[Schedule], step: int) -> list[int]:
        return [s[entry_at(s, step)][1] for s in schedules]

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds, negative_prompt_embeds)`` for model call ``step`` (0-based)."""
        return (
            self.embeds[self._indices(self.prompt_schedules, step)],
            self.embeds[self._indices(self.negative_schedules, step)],
        )

    def changes_at(self, step: int) -> bool:
        """True when some row uses another entry at ``step`` than at ``step - 1``."""
        return step > 0 and any(
            self._indices(s, step) != self._indices(s, step - 1)
            for s in (self.prompt_schedules, self.negative_schedules)
        )

    def inputs_at(self, pipe: Any, step: int) -> dict[str, Any]:
        """The pipeline's ``prompt_embeds`` from model call ``step`` on, when it changes there."""
        if not self.changes_at(step):
            return {}
        positive, negative = self.at(step)
        return {"prompt_embeds": _guided(pipe, negative, positive)}


def schedule_steps(steps: int, scheduler: Any) -> int:
    """The model calls A1111 spreads a schedule over: two per step for a second-order sampler (Heun, DPM2,
    DPM++ SDE: diffusers' ``order`` 2), as its ``total_steps``."""
    return steps * (2 if getattr(scheduler, "order", 1) == 2 else 1)


def encode_conditioning(
    pipe: Any,
    prompts_: Sequence[str],
    negatives: Sequence[str],
    device: Any,
    dtype: Any,
    *,
    steps: int = 1,
    clip_skip: int = 0,
    force: bool = False,
) -> Conditioning | None:
    """The batch's conditioning over ``steps`` model calls; None when the pipeline's own ``prompt=``
    encoding gives the same (no editing, clip skip at most 1, plain texts of at most 75 tokens) unless
    ``force``. ``clip_skip`` 0 is the default, 1. Raises PromptTooLongError and PromptScheduleError."""
    import torch

    if len(prompts_) != len(negatives):
        raise ValueError(f"{len(prompts_)} prompts but {len(negatives)} negative prompts")
    clip_skip = max(1, clip_skip)
    raw = list(dict.fromkeys([*prompts_, *negatives]))
    schedules = {text: prompt_schedule(text, steps) for text in raw}
    edited = any(s != ((steps, text),) for text, s in schedules.items())
    if not (force or edited or clip_skip > 1 or prompts.needs_embeddings(pipe, raw)):
        return None

    tokenizer = pipe.tokenizer
    convert = prompts._converter(pipe)
    empty = prompts.empty_chunk(tokenizer)
    token_rows: dict[tuple[int, ...], int] = {tuple(empty.tokens): 0}  # each distinct chunk encoded once
    rows_token: list[int] = []  # per emphasised row: its token row
    rows_weights: list[list[float]] = []
    rows_group: list[int] = []  # rows sharing an emphasis mean: one prompt's schedule, one chunk index
    groups: dict[tuple[str, int], int] = {}
    entries: dict[tuple[str, str], int] = {}
    entry_rows: list[list[int]] = []
    for text in raw:
        texts = list(dict.fromkeys(t for _, t in schedules[text]))
        chunked = {t: prompts.tokenize_prompt(tokenizer, t, convert) for t in texts}
        length = max(len(c) for c in chunked.values())
        for t in texts:
            own = chunked[t] + [empty] * (length - len(chunked[t]))
            entries[(text, t)] = len(entry_rows)
            entry_rows.append(list(range(len(rows_token), len(rows_token) + length)))
            for position, chunk in enumerate(own):
                rows_token.append(token_rows.setdefault(tuple(chunk.tokens), len(token_rows)))
                rows_weights.append(chunk.multipliers)
                rows_group.append(groups.setdefault((text, position), len(groups)))

    ids = torch.tensor(list(token_rows), dtype=torch.long, device=device)
    z = prompts.encode_hidden(pipe.text_encoder, ids, clip_skip)
    weighted = prompts.apply_emphasis(
        z[torch.tensor(rows_token, device=z.device)],
        torch.tensor(rows_weights, dtype=torch.float32),
        torch.tensor(rows_group),
    )
    # The batch's padding: plain encoded empty chunks (A1111's pad_cond), after the weighted rows.
    every = torch.cat([weighted, z[:1]])
    n_chunks = max(len(r) for r in entry_rows)
    index = [r + [len(weighted)] * (n_chunks - len(r)) for r in entry_rows]
    embeds = every[torch.tensor(index, device=every.device)]
    embeds = embeds.reshape(len(index), n_chunks * every.shape[1], every.shape[2]).to(
        device=device, dtype=dtype
    )

    def rows_of(text: str) -> Schedule:
        return tuple((end, entries[(text, t)]) for end, t in schedules[text])

    return Conditioning(embeds, [rows_of(p) for p in prompts_], [rows_of(n) for n in negatives])


class ScheduleSwap:
    """``callback_on_step_end``: ``inner`` (the progress callback) first, then the tensors the pipeline
    should use from the next model call on, where the schedule changes there (:meth:`Conditioning` rows, or
    an SDXL batch's states). The pipeline must list ``prompt_embeds`` in its tensor inputs."""

    def __init__(self, schedule: Conditioning | SdxlStates, inner: Any) -> None:
        self.schedule, self.inner = schedule, inner

    def __call__(self, pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        out = dict(self.inner(pipe, i, t, kw))
        out.update(self.schedule.inputs_at(pipe, i + 1))
        return out


def _guided(pipe: Any, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """What diffusers' loop holds: ``[negative, positive]`` with guidance, else the positive rows."""
    import torch

    return torch.cat([negative, positive]) if pipe.do_classifier_free_guidance else positive


@dataclass
class SdxlStates:
    """An SDXL batch's editing schedule: the pipeline inputs (both encoders' embeddings, the pooled ones)
    of each run of model calls whose texts stay the same. A1111's SDXL reads editing the same way."""

    starts: list[int]  # the first model call of each state, from 0
    states: list[dict[str, torch.Tensor]]  # prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, ...

    @property
    def static(self) -> bool:
        return len(self.starts) == 1

    def inputs_at(self, pipe: Any, step: int) -> dict[str, Any]:
        if step not in self.starts:
            return {}
        state = self.states[self.starts.index(step)]
        return {
            "prompt_embeds": _guided(pipe, state["negative_prompt_embeds"], state["prompt_embeds"]),
            "add_text_embeds": _guided(
                pipe, state["negative_pooled_prompt_embeds"], state["pooled_prompt_embeds"]
            ),
        }


def sdxl_states(
    prompts_: Sequence[str], negatives: Sequence[str], steps: int
) -> list[tuple[int, list[str], list[str]]] | None:
    """``(first model call, prompts, negatives)`` of each run of calls whose texts stay the same over
    ``steps`` calls; None when no text has editing (the batch is encoded as before)."""
    schedules = {text: prompt_schedule(text, steps) for text in dict.fromkeys([*prompts_, *negatives])}
    if all(s == ((steps, text),) for text, s in schedules.items()):
        return None
    out: list[tuple[int, list[str], list[str]]] = []
    for call in range(steps):
        now = [
            [schedules[t][entry_at(schedules[t], call)][1] for t in texts] for texts in (prompts_, negatives)
        ]
        if not out or now != [out[-1][1], out[-1][2]]:
            out.append((call, now[0], now[1]))
    return out


def encode_sdxl_states(
    pipe: Any, states: list[tuple[int, list[str], list[str]]], device: Any, dtype: Any
) -> SdxlStates:
    """Each state's SDXL inputs: A1111's encoding (engine/prompts_sdxl.py), or for plain texts the
    pipeline's own (what ``prompt=`` would give), so that every state can be handed over as tensors."""
    from engine.prompts_sdxl import encode_prompts_sdxl

    encoded: list[dict[str, Any]] = []
    for _, positive, negative in states:
        embeds = encode_prompts_sdxl(pipe, positive, negative, device, dtype)
        if embeds is not None:
            encoded.append(embeds.as_kwargs())
            continue
        names = (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        own = pipe.encode_prompt(
            prompt=positive,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
        )
        encoded.append(dict(zip(names, own, strict=True)))
    return SdxlStates([start for start, _, _ in states], encoded)


def text_inputs(
    pipe: Any,
    kwargs: dict[str, Any],
    *,
    sdxl: bool,
    calls: int,
    size: tuple[int, int],
    clip_skip: int,
    device: Any,
    dtype: Any,
) -> Conditioning | SdxlStates | None:
    """Turn the pipeline call's ``prompt``/``negative_prompt`` texts in ``kwargs`` into what it needs: the
    texts themselves where the pipeline's own encoding gives the same, else embeddings (A1111 emphasis,
    BREAK, over 75 tokens, clip skip, editing; SDXL always: both encoders, pooled, size conditioning).
    Returns the schedule whose later steps the step callback swaps in (None: nothing changes per step)."""
    from engine.prompts_sdxl import sdxl_inputs, size_conditioning

    width, height = size
    if sdxl:
        texts = kwargs.pop("prompt"), kwargs.pop("negative_prompt")
        if (states := sdxl_states(*texts, calls)) is None:
            kwargs.update(sdxl_inputs(pipe, *texts, width, height, device, dtype))
            return None
        # Prompt editing: the first state's tensors now, the others from the step callback.
        encoded = encode_sdxl_states(pipe, states, device, dtype)
        kwargs.update(encoded.states[0], **size_conditioning(width, height))
        return encoded
    schedule = encode_conditioning(
        pipe, kwargs["prompt"], kwargs["negative_prompt"], device, dtype, steps=calls, clip_skip=clip_skip
    )
    if schedule is not None:
        del kwargs["prompt"], kwargs["negative_prompt"]
        kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = schedule.at(0)
    return schedule
