"""AUTOMATIC1111 prompt syntax: emphasis, ``BREAK`` and prompts longer than 75 tokens.

A1111 users write ``(word:1.2)``, ``(word)`` (x1.1), ``[word]`` (/1.1) and ``BREAK``, and expect a long
prompt to be encoded in chunks of 75 tokens instead of being cut at CLIP's 77. The diffusers pipeline knows
none of that, so for such prompts :func:`encode_prompts` builds ``prompt_embeds`` / ``negative_prompt_embeds``
the way A1111's ``FrozenCLIPEmbedderWithCustomWords`` does:

- :func:`parse_prompt_attention` splits the text into (fragment, weight) pairs (a port of A1111's
  ``modules/prompt_parser.py``);
- :func:`tokenize_prompt` tokenizes the fragments and packs the tokens into chunks of 75 (plus BOS/EOS =
  77), starting a new chunk at ``BREAK`` and moving the words after a nearby comma to the next chunk;
- each chunk goes through the text encoder, its token vectors are multiplied by their weights and the
  chunk's original mean is restored (A1111's default ``Original`` emphasis);
- chunks are concatenated along the sequence axis, and every prompt and negative of the batch is padded
  with encoded empty chunks to the same length (the UNet needs one sequence length for the whole batch,
  and classifier-free guidance needs cond and uncond alike).

A batch whose prompts and negatives have no syntax and at most 75 tokens gets ``None``: the runner keeps
passing ``prompt=`` so those images stay bit-identical to the plain pipeline call.

Parsing is torch-free; torch is imported only inside the encoding functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import bounds

if TYPE_CHECKING:
    import torch

CHUNK_LENGTH = 75  # tokens per chunk, without BOS/EOS (A1111's chunk_length)
# A1111's "Prompt word wrap length limit" (opts.comma_padding_backtrack, default 20): when a chunk fills up
# and its last comma is at most this many tokens back, the tokens after the comma move to the next chunk
# so that a phrase is not split between two chunks.
COMMA_BACKTRACK = 20
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"
# Marker weight of a BREAK entry in parse_prompt_attention's output, as in A1111. Brackets multiply it like
# any weight, as A1111's do: "(a BREAK b)" gives ("BREAK", -1.1), which is then no BREAK but the word "BREAK"
# weighted -1.1.
_BREAK_WEIGHT = -1.0

# The tokens of the emphasis grammar, in A1111's order: escapes, brackets, ":weight)", text runs, ":".
_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (fragment, weight) pairs, A1111-style.

    ``(abc)`` multiplies the weight of abc by 1.1, ``(abc:3.12)`` by 3.12, ``[abc]`` by 1/1.1; ``\\(``
    ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; an unclosed bracket applies up to the end of the
    text; a closing bracket without an opening one is literal text. ``BREAK`` (upper case, a word of its
    own) becomes a ``("BREAK", -1.0)`` entry, whose weight brackets around it multiply as A1111's do (a
    ``BREAK`` inside brackets is then the word BREAK with a negative weight). Neighbouring fragments of equal
    weight are merged. A lone backslash is dropped, as in A1111. Unlike A1111, every weight is kept within
    :data:`engine.bounds.WEIGHT`.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list[Any]] = []  # [fragment, weight], mutable while brackets close
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] = _clamp_weight(res[p][1] * multiplier)

    for m in _RE_ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            try:
                value = _clamp_weight(float(weight))  # "(a:999…9)" of 400 digits is inf
            except ValueError:
                # "(a:1.2.3)": A1111 raises here, but a typo should not fail the job: keep ":1.2.3" as text
                # and let the ")" close the bracket as a plain one.
                res.append([token[:-1], 1.0])
                value = ROUND_MULTIPLIER
            multiply_range(round_brackets.pop(), value)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK, _BREAK_WEIGHT])
                res.append([part, 1.0])

    # Unclosed brackets still count, up to the end of the prompt.
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(fragment, weight) for fragment, weight in res]


def _clamp_weight(weight: float) -> float:
    """``weight`` within :data:`engine.bounds.WEIGHT`: an emphasis past it (``(a:1e40)`` is inf in float32,
    ``((a:1e200):1e200)`` in float64) would make the chunk's embeddings, and the picture, NaN."""
    return min(max(weight, bounds.WEIGHT.lo), bounds.WEIGHT.hi)


def has_syntax(text: str) -> bool:
    """True when A1111 would read ``text`` differently from the plain string (emphasis, escapes, BREAK)."""
    return parse_prompt_attention(text) != [(text, 1.0)]


@dataclass
class PromptChunk:
    """One encoder input of 77 ids (BOS, up to 75 tokens, EOS, padding) and a weight per id."""

    tokens: list[int]
    multipliers: list[float]


class PromptTooLongError(ValueError):
    """A prompt past :data:`engine.bounds.PROMPT_CHUNKS`: every chunk lengthens the UNet's context."""

    def __init__(self) -> None:  # one message, also for the tokenizer-free count (engine/requests.py)
        super().__init__(
            f"the prompt is over {bounds.PROMPT_CHUNKS} chunks of {CHUNK_LENGTH} tokens "
            "(each BREAK starts one)"
        )


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    return bos, eos, eos if pad is None else int(pad)


def _finish_chunk(tokenizer: Any, tokens: list[int], multipliers: list[float]) -> PromptChunk:
    # Same layout as the pipeline's own tokenizer call (padding="max_length"): BOS, tokens, EOS, then pad
    # ids (SD 1.x pads with EOS, like A1111's id_end; SD 2.x tokenizers pad with their own pad id).
    bos, eos, pad = _special_ids(tokenizer)
    fill = CHUNK_LENGTH - len(tokens)
    return PromptChunk(
        tokens=[bos, *tokens, eos] + [pad] * fill,
        multipliers=[1.0, *multipliers, 1.0] + [1.0] * fill,
    )


_COMMA = ",</w>"


def empty_chunk(tokenizer: Any) -> PromptChunk:
    """The chunk of the empty prompt (A1111 pads shorter prompts with it)."""
    return _finish_chunk(tokenizer, [], [])


def _comma_id(tokenizer: Any) -> int | None:
    """The id of CLIP's "," token, or None when the vocabulary has none. ``convert_tokens_to_ids`` looks one
    token up; ``get_vocab()`` copies all 49,408 entries of SD's vocabulary (20-60 ms), which on every request
    was most of the engine's per-image CPU cost on a GPU (BENCHMARKS.md, GPU results)."""
    token_id = tokenizer.convert_tokens_to_ids(_COMMA)
    if token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != _COMMA):
        return None
    return int(token_id)


def tokenize_prompt(
    tokenizer: Any, text: str, convert: Callable[[str], str] | None = None
) -> list[PromptChunk]:
    """``text`` as A1111 chunks of 77 ids (a port of A1111's ``tokenize_line``). Always at least one chunk,
    at most :data:`engine.bounds.PROMPT_CHUNKS` (:class:`PromptTooLongError` past that).

    ``convert`` rewrites each fragment before tokenizing (the pipeline's textual-inversion
    ``maybe_convert_prompt``, which expands multi-vector embedding tokens).
    """
    parsed = parse_prompt_attention(text)
    fragments = [
        f if convert is None or (f == BREAK and w == _BREAK_WEIGHT) else convert(f) for f, w in parsed
    ]
    # verbose=False: token lists longer than 77 are the point here, not a reason for transformers to warn.
    tokenized = tokenizer(fragments, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    comma = _comma_id(tokenizer)

    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    multipliers: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, multipliers, last_comma
        if len(chunks) == bounds.PROMPT_CHUNKS:  # stop at once: 250 BREAKs must not cost 250 chunks
            raise PromptTooLongError
        chunks.append(_finish_chunk(tokenizer, tokens, multipliers))
        tokens, multipliers, last_comma = [], [], -1

    for ids, (fragment, weight) in zip(tokenized, parsed, strict=True):
        if fragment == BREAK and weight == _BREAK_WEIGHT:
            next_chunk()
            continue
        for token in ids:
            if token == comma:
                last_comma = len(tokens)
            elif (
                COMMA_BACKTRACK != 0
                and len(tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                moved_tokens, moved_multipliers = tokens[cut:], multipliers[cut:]
                tokens, multipliers = tokens[:cut], multipliers[:cut]
                next_chunk()
                tokens, multipliers = moved_tokens, moved_multipliers
            if len(tokens) == CHUNK_LENGTH:
                next_chunk()
            tokens.append(int(token))
            multipliers.append(float(weight))
    if tokens or not chunks:
        next_chunk()
    return chunks


def chunk_count(tokenizer: Any, *texts: str) -> int:
    """How many 77-token chunks the longest of ``texts`` (a prompt and its negative) encodes to.

    Rows of one batch are padded to the same number of chunks, and padding a short prompt with empty chunks
    changes its image slightly (its cross-attention sees more tokens); batching only requests of equal
    chunk counts keeps "alone == in a batch" exact for long prompts too."""
    return max((len(tokenize_prompt(tokenizer, text)) for text in texts), default=1)


def _converter(pipe: Any) -> Callable[[str], str] | None:
    """The pipeline's textual-inversion rewrite, when it has loaded embeddings. Without any it is an
    identity that re-tokenizes the text (and has transformers warn about long prompts): skip it then."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    tokenizer = pipe.tokenizer
    added = set(getattr(tokenizer, "added_tokens_encoder", {})) - set(tokenizer.all_special_tokens)
    if convert is None or not added:
        return None
    return lambda text: convert(text, tokenizer)


def needs_embeddings(pipe: Any, texts: Sequence[str]) -> bool:
    """True when some text has emphasis/escape/BREAK syntax or more than 75 tokens: the pipeline's own
    ``prompt=`` encoding would then differ from A1111's (it ignores the syntax and cuts at 77)."""
    if any(has_syntax(text) for text in texts):
        return True
    convert = _converter(pipe)
    plain = [convert(t) if convert is not None else t for t in dict.fromkeys(texts)]
    if not plain:
        return False
    ids = pipe.tokenizer(plain, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return any(len(x) > CHUNK_LENGTH for x in ids)


# Below this share of a chunk's mean absolute value, its mean is taken for rounding noise (a float32 mean of
# 77 x 768 values errs by ~1e-7 of it; real SD 1.x encoders end in a LayerNorm whose learned bias sets the
# mean far above that).
_MEAN_FLOOR = 1e-4


def apply_emphasis(
    z: torch.Tensor, multipliers: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """A1111's ``EmphasisOriginal``: scale each token vector of ``z`` (chunks, 77, dim) by its multiplier
    (chunks, 77), then rescale each group of chunks so that its mean is what it was before.

    ``groups`` (chunks,) numbers the groups; without it each chunk is its own. A1111 takes the mean over one
    encoder call's chunks of one index: the texts of one prompt's editing schedule (engine/conditioning.py
    passes those groups), a single chunk for a prompt without editing. Groups whose weights are all 1 come
    back unchanged, bit for bit.
    """
    import torch

    z32 = z.float()
    m = multipliers.to(device=z.device, dtype=torch.float32)
    g = torch.arange(len(z), device=z.device) if groups is None else groups.to(z.device)
    n = int(g.max()) + 1 if len(g) else 0
    counts = torch.zeros(n, device=z.device).index_add_(0, g, torch.ones(len(g), device=z.device))

    def group_mean(x: torch.Tensor) -> torch.Tensor:  # chunks hold equal numbers of values
        sums = torch.zeros(n, device=z.device).index_add_(0, g, x.mean(dim=(1, 2)))
        return (sums / counts)[g].view(-1, 1, 1)

    original_mean = group_mean(z32)
    weighted = z32 * m.unsqueeze(-1)
    new_mean = group_mean(weighted)
    # A mean that is only float rounding (a text encoder whose last LayerNorm has no bias gives tokens of
    # mean 0, so a chunk's mean is ~1e-8 of its values) would scale the chunk by a ratio of two rounding
    # errors: any size or sign, different on each CPU. Keep the weighted chunk as it is then.
    defined = (original_mean.abs() > _MEAN_FLOOR * group_mean(z32.abs())) & (
        new_mean.abs() > _MEAN_FLOOR * group_mean(weighted.abs())
    )
    scale = torch.where(defined, original_mean / torch.where(defined, new_mean, 1.0), 1.0)
    out = (weighted * scale).to(z.dtype)
    weighted_rows = (m != 1.0).any(dim=1).float()
    plain = torch.zeros(n, device=z.device).index_add_(0, g, weighted_rows)[g] == 0
    return torch.where(plain.view(-1, 1, 1), z, out)


def encode_hidden(encoder: Any, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """``encoder``'s token vectors for ``ids`` (rows, 77), A1111's "Clip skip" way: with ``clip_skip`` N > 1
    the output of the N-th layer from the end, through the final layer norm; with 1 (or 0) the encoder's
    own last hidden state, as the pipeline takes it. N past the encoder's depth takes its first layer."""
    import torch

    with torch.no_grad():
        if clip_skip <= 1:
            return encoder(ids)[0]  # last_hidden_state: the final layer norm of the last layer
        hidden = encoder(ids, output_hidden_states=True).hidden_states  # embeddings, then each layer
        z = hidden[-min(clip_skip, len(hidden) - 1)]
        inner = getattr(encoder, "text_model", encoder)  # transformers 5 dropped the wrapper
        return inner.final_layer_norm(z)


def encode_weighted(
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str],
    device: Any,
    dtype: Any,
    clip_skip: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111-style ``(prompt_embeds, negative_prompt_embeds)``, each (batch, chunks * 77, dim), every row
    padded with empty chunks to the longest prompt or negative of the batch (prompt editing at its first
    step: engine/conditioning.py has the whole schedule)."""
    from engine.conditioning import encode_conditioning

    conditioning = encode_conditioning(
        pipe, prompts, negatives, device, dtype, clip_skip=clip_skip, force=True
    )
    assert conditioning is not None  # force=True
    return conditioning.at(0)


def encode_prompts(
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str],
    device: Any,
    dtype: Any,
    clip_skip: int = 0,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Embeddings for a batch when any of its prompts or negatives needs A1111 handling (or clip skip is
    above 1), else None (the caller then passes ``prompt=`` / ``negative_prompt=`` to the pipeline as
    before).

    All-or-nothing per batch: the pipeline takes either texts or embeddings for the whole batch. A plain
    prompt encoded here gets the same embedding as from the pipeline (up to float rounding of a different
    encoder batch size)."""
    from engine.conditioning import encode_conditioning

    conditioning = encode_conditioning(pipe, prompts, negatives, device, dtype, clip_skip=clip_skip)
    return None if conditioning is None else conditioning.at(0)
