"""A1111 prompt syntax on SDXL's two text encoders, and SDXL's size and crop conditioning.

AUTOMATIC1111 wraps each of SDXL's text encoders (CLIP ViT-L and OpenCLIP bigG) in the same chunking and
emphasis code as SD 1.x (engine/prompts.py: ``tokenize_prompt``, ``apply_emphasis``), and then:

- takes each encoder's penultimate hidden layer (no final layer norm), emphasis applied per encoder, and
  concatenates the two along the feature axis (768 + 1280 = 2048 for SDXL base), chunk by chunk;
- takes the pooled embedding from the second encoder's projection of the *first* chunk only, unweighted;
- zeroes the negative embeddings (pooled too) when the negative prompt is empty (its
  ``force_zero_embeddings``), as diffusers' ``force_zeros_for_empty_prompt`` does for ``None``.

A batch whose prompts are all plain and at most 75 tokens, and whose negatives are all non-empty, is passed
to diffusers as text (its own encoding is the same for those). Otherwise :func:`encode_prompts_sdxl` builds
the four tensors, and an empty negative is zeroed row by row, so that a request's image does not depend on
what shares its batch.

Size conditioning: SDXL's UNet is told the picture's original size, crop and target size. A1111 sends
``original_size = target_size = (height, width)`` and crop ``(0, 0)``, for txt2img and img2img alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.prompts import PromptChunk, apply_emphasis, empty_chunk, needs_embeddings, tokenize_prompt

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SdxlEmbeds:
    prompt_embeds: torch.Tensor  # (batch, chunks * 77, width 1 + width 2)
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor  # (batch, projection of encoder 2)
    negative_pooled_prompt_embeds: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": self.prompt_embeds,
            "negative_prompt_embeds": self.negative_prompt_embeds,
            "pooled_prompt_embeds": self.pooled_prompt_embeds,
            "negative_pooled_prompt_embeds": self.negative_pooled_prompt_embeds,
        }


def size_conditioning(width: int, height: int) -> dict[str, tuple[int, int]]:
    """A1111's SDXL conditioning: the picture is its own original, uncropped."""
    return {"original_size": (height, width), "target_size": (height, width), "crops_coords_top_left": (0, 0)}


def _converter(pipe: Any, tokenizer: Any) -> Callable[[str], str] | None:
    """The pipeline's textual-inversion rewrite for ``tokenizer`` when that tokenizer has added tokens."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    added = set(getattr(tokenizer, "added_tokens_encoder", {})) - set(tokenizer.all_special_tokens)
    if convert is None or not added:
        return None
    return lambda text: convert(text, tokenizer)


def _encode(
    encoder: Any, tokenizer: Any, per_text: dict[str, list[PromptChunk]], device: Any
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, int]]:
    """Every unique text's chunks through ``encoder``: (rows, 77, width) penultimate states with emphasis,
    the pooled projection of each row (None without a projection), and each text's first row."""
    import torch

    rows = [empty_chunk(tokenizer)]
    start: dict[str, int] = {}
    for text, chunks in per_text.items():
        start[text] = len(rows)
        rows += chunks
    ids = torch.tensor([c.tokens for c in rows], dtype=torch.long, device=device)
    weights = torch.tensor([c.multipliers for c in rows], dtype=torch.float32)
    with torch.no_grad():
        out = encoder(ids, output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    return apply_emphasis(out.hidden_states[-2], weights), pooled, start


def encode_prompts_sdxl(
    pipe: Any, prompts: Sequence[str], negatives: Sequence[str], device: Any, dtype: Any
) -> SdxlEmbeds | None:
    """The SDXL embeddings of a batch when any text needs A1111 handling or a negative is empty, else
    None (the caller passes ``prompt=`` / ``negative_prompt=``)."""
    import torch

    if len(prompts) != len(negatives):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    texts = [*prompts, *negatives]
    if all(negatives) and not needs_embeddings(pipe, texts):
        return None
    unique = list(dict.fromkeys(texts))
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    chunked = [
        {text: tokenize_prompt(tok, text, _converter(pipe, tok)) for text in unique} for tok, _ in pairs
    ]
    # The two tokenizers share CLIP's vocabulary, so they chunk alike; an embedding added to one only could
    # differ: pad to the longest of both.
    n_chunks = max(len(chunks) for per in chunked for chunks in per.values())
    widths: list[torch.Tensor] = []
    pooled_rows: torch.Tensor | None = None
    for (tokenizer, encoder), per_text in zip(pairs, chunked, strict=True):
        z, pooled, start = _encode(encoder, tokenizer, per_text, device)
        own = {t: len(per_text[t]) for t in unique}
        index = [[start[t] + k for k in range(own[t])] + [0] * (n_chunks - own[t]) for t in texts]
        picked = z[torch.tensor(index, device=z.device)]  # (texts, n_chunks, 77, width)
        widths.append(picked.reshape(len(texts), n_chunks * z.shape[1], z.shape[2]))
        if pooled is not None:
            pooled_rows = pooled[torch.tensor([start[t] for t in texts], device=pooled.device)]
    if pooled_rows is None:
        raise ValueError("the second text encoder has no projection: not an SDXL pipeline")
    embeds = torch.cat(widths, dim=-1).to(device=device, dtype=dtype)
    pooled_all = pooled_rows.to(device=device, dtype=dtype)
    empty = torch.tensor([not t for t in texts], device=embeds.device)
    empty[: len(prompts)] = False  # only an empty *negative* is zeroed (A1111's force_zero_embeddings)
    embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(embeds), embeds)
    pooled_all = torch.where(empty.view(-1, 1), torch.zeros_like(pooled_all), pooled_all)
    n = len(prompts)
    return SdxlEmbeds(embeds[:n], embeds[n:], pooled_all[:n], pooled_all[n:])


def sdxl_inputs(
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str],
    width: int,
    height: int,
    device: Any,
    dtype: Any,
) -> dict[str, Any]:
    """The text and size inputs of an SDXL pipeline call: the texts themselves, or their A1111 embeddings
    (:func:`encode_prompts_sdxl`), and :func:`size_conditioning`."""
    embeds = encode_prompts_sdxl(pipe, prompts, negatives, device, dtype)
    texts: dict[str, Any] = (
        embeds.as_kwargs()
        if embeds is not None
        else {"prompt": list(prompts), "negative_prompt": list(negatives)}
    )
    return {**texts, **size_conditioning(width, height)}
