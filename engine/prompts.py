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
_BREAK_WEIGHT = -1.0  # marker weight of a BREAK entry in parse_prompt_attention's output, as in A1111

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
    own, also inside brackets) becomes a ``("BREAK", -1.0)`` entry. Neighbouring fragments of equal weight
    are merged. A lone backslash is dropped, as in A1111. Unlike A1111, every weight is kept within
    :data:`engine.bounds.WEIGHT`.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list[Any]] = []  # [fragment, weight, is_break], mutable while brackets close
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            # Unlike A1111, a BREAK inside brackets stays a BREAK: A1111 multiplies its -1 marker too, which
            # turns it into the word "BREAK" encoded with a negative weight.
            if not res[p][2]:
                res[p][1] = _clamp_weight(res[p][1] * multiplier)

    for m in _RE_ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0, False])
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
                res.append([token[:-1], 1.0, False])
                value = ROUND_MULTIPLIER
            multiply_range(round_brackets.pop(), value)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK, _BREAK_WEIGHT, True])
                res.append([part, 1.0, False])

    # Unclosed brackets still count, up to the end of the prompt.
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0, False]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1] and not res[i][2] and not res[i + 1][2]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(fragment, weight) for fragment, weight, _ in res]


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


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's ``EmphasisOriginal``: scale each token vector of ``z`` (chunks, 77, dim) by its multiplier
    (chunks, 77), then rescale each chunk so that its mean is what it was before.

    A1111 takes the mean over the whole batch of one chunk index; here it is per chunk, so that a prompt's
    embedding does not depend on what else shares its batch (in A1111's usual batch, of one prompt repeated,
    the two are the same). Chunks whose weights are all 1 come back unchanged, bit for bit.
    """
    import torch

    z32 = z.float()
    m = multipliers.to(device=z.device, dtype=torch.float32)
    original_mean = z32.mean(dim=(1, 2), keepdim=True)
    weighted = z32 * m.unsqueeze(-1)
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # A mean that is only float rounding (a text encoder whose last LayerNorm has no bias gives tokens of
    # mean 0, so a chunk's mean is ~1e-8 of its values) would scale the chunk by a ratio of two rounding
    # errors: any size or sign, different on each CPU. Keep the weighted chunk as it is then.
    defined = (original_mean.abs() > _MEAN_FLOOR * z32.abs().mean(dim=(1, 2), keepdim=True)) & (
        new_mean.abs() > _MEAN_FLOOR * weighted.abs().mean(dim=(1, 2), keepdim=True)
    )
    scale = torch.where(defined, original_mean / torch.where(defined, new_mean, 1.0), 1.0)
    out = (weighted * scale).to(z.dtype)
    plain = (m == 1.0).all(dim=1).view(-1, 1, 1)
    return torch.where(plain, z, out)


def encode_weighted(
    pipe: Any, prompts: Sequence[str], negatives: Sequence[str], device: Any, dtype: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111-style ``(prompt_embeds, negative_prompt_embeds)``, each (batch, chunks * 77, dim), every row
    padded with empty chunks to the longest prompt or negative of the batch."""
    import torch

    if len(prompts) != len(negatives):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    convert = _converter(pipe)
    texts = [*prompts, *negatives]
    unique = list(dict.fromkeys(texts))  # a request of n images repeats its prompt n times: encode it once
    per_text = {text: tokenize_prompt(tokenizer, text, convert) for text in unique}
    n_chunks = max(len(chunks) for chunks in per_text.values())

    empty = empty_chunk(tokenizer)
    rows = [empty, *(chunk for text in unique for chunk in per_text[text])]
    ids = torch.tensor([c.tokens for c in rows], dtype=torch.long, device=device)
    weights = torch.tensor([c.multipliers for c in rows], dtype=torch.float32)
    with torch.no_grad():
        # [0] is last_hidden_state (after the final layer norm): what the pipeline uses without clip_skip.
        z = apply_emphasis(encoder(ids)[0], weights)

    # Row 0 is the empty chunk; each unique text's chunks follow in order.
    start: dict[str, int] = {}
    row = 1
    for text in unique:
        start[text] = row
        row += len(per_text[text])
    index = []
    for text in texts:
        own = len(per_text[text])
        index.append([start[text] + k for k in range(own)] + [0] * (n_chunks - own))
    embeds = z[torch.tensor(index, device=z.device)]  # (texts, n_chunks, 77, dim)
    embeds = embeds.reshape(len(texts), n_chunks * z.shape[1], z.shape[2]).to(device=device, dtype=dtype)
    return embeds[: len(prompts)], embeds[len(prompts) :]


def encode_prompts(
    pipe: Any, prompts: Sequence[str], negatives: Sequence[str], device: Any, dtype: Any
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Embeddings for a batch when any of its prompts or negatives needs A1111 handling, else None (the
    caller then passes ``prompt=`` / ``negative_prompt=`` to the pipeline as before).

    All-or-nothing per batch: the pipeline takes either texts or embeddings for the whole batch. A plain
    prompt encoded here gets the same embedding as from the pipeline (up to float rounding of a different
    encoder batch size)."""
    if not needs_embeddings(pipe, [*prompts, *negatives]):
        return None
    return encode_weighted(pipe, prompts, negatives, device, dtype)
