"""Textual-inversion embeddings the A1111 way (engine/embeddings.py): a file's name used as a word in the
prompt or negative puts its vectors into the text encoder's input, in the plain and the A1111-syntax
encodings alike; the PNG info names them with A1111's "TI hashes"; files that cannot apply fail their own
request with the reason."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import embeddings
from engine.pnginfo import parse_parameters, read_png_parameters
from engine.protocol import JobDone, JobFailed

from .conftest import request

WIDTH = 32  # the tiny model's text encoder width (engine/tiny.py)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("embeddings")
    gen = torch.Generator().manual_seed(0)
    # A1111's own layout as older versions saved it (an nn.ParameterDict: the safe unpickler's stand-in
    # keeps its vectors), 2 vectors.
    vectors = torch.nn.Parameter(torch.randn(2, WIDTH, generator=gen) * 3)
    ink = {"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": vectors})}
    torch.save({**ink, "name": "InkEmb", "step": 500}, d / "InkEmb.pt")
    (d / "neg").mkdir()  # subfolders are searched, as A1111 does
    save_file(
        {"emb_params": torch.randn(1, WIDTH, generator=gen) * 3}, str(d / "neg" / "flat-neg.safetensors")
    )
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(d / "xlonly.safetensors"))
    torch.save({"string_to_param": {"*": _RunsCode(d / "PWNED")}}, d / "evil.pt")
    return d


@pytest.fixture(scope="module")
def emb_runner(tiny_model: Path, emb_dir: Path):
    from engine.runner import Runner

    r = Runner(tiny_model, device="cpu", max_batch=4, embeddings_dir=emb_dir)
    yield r
    r.close()


def _vectors(emb_dir: Path, name: str) -> torch.Tensor:
    return embeddings.read_embedding(next(emb_dir.rglob(f"{name}.*"))).vectors[""]


def _contains_rows(seen: list[torch.Tensor], rows: torch.Tensor) -> bool:
    """Whether some recorded input-embedding output holds ``rows`` consecutively."""
    n = rows.shape[0]
    for out in seen:
        for seq in out.reshape(-1, out.shape[-2], out.shape[-1]):
            for i in range(seq.shape[0] - n + 1):
                if torch.allclose(seq[i : i + n].float(), rows, atol=1e-6):
                    return True
    return False


def test_a_name_in_the_prompt_or_negative_puts_its_vectors_in(emb_runner, emb_dir):
    r = emb_runner
    token_input = r.pipe.text_encoder.get_input_embeddings()
    seen: list[torch.Tensor] = []
    hook = token_input.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    try:
        plain = r.run([request("p", prompt="a photo of inkemb", negative_prompt="flat-neg, blurry")])["p"]
        plain_seen, seen[:] = list(seen), []
        # Emphasis sends the texts through engine/prompts.py's A1111 encoding instead of the pipeline's.
        a1111 = r.run([request("w", prompt="a photo of (InkEmb:1.2)")])["w"]
        a1111_seen, seen[:] = list(seen), []
        none = r.run([request("n", prompt="a photo of inkembx")])["n"]  # not the word: no embedding
    finally:
        hook.remove()
    assert all(isinstance(e, JobDone) for e in (plain, a1111, none)), (plain, a1111, none)
    ink, flat = _vectors(emb_dir, "InkEmb"), _vectors(emb_dir, "flat-neg")
    assert _contains_rows(plain_seen, ink) and _contains_rows(plain_seen, flat)
    assert _contains_rows(a1111_seen, ink)
    assert not _contains_rows(seen, ink[:1])

    # A1111's "TI hashes": each file's SHA-256, 12 digits; the prompt keeps the names as written.
    text = read_png_parameters(plain.images[0].png) or ""
    assert text.startswith("a photo of inkemb\nNegative prompt: flat-neg, blurry\n")

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    expected = (
        f"InkEmb: {sha(emb_dir / 'InkEmb.pt')}, flat-neg: {sha(emb_dir / 'neg' / 'flat-neg.safetensors')}"
    )
    assert parse_parameters(text)["TI hashes"] == expected
    assert "TI hashes" not in parse_parameters(read_png_parameters(none.images[0].png) or "")


def test_embeddings_that_cannot_apply_fail_their_request_alone(emb_runner, emb_dir):
    results = emb_runner.run(
        [
            request("xl", prompt="a photo of xlonly"),
            request("ok", prompt="a photo of InkEmb"),
            request("evil", prompt="a photo", negative_prompt="evil"),
        ]
    )
    assert isinstance(results["ok"], JobDone)
    xl, evil = results["xl"], results["evil"]
    assert isinstance(xl, JobFailed) and "made for SDXL models; this model is SD 1.x/2.x" in xl.reason
    assert isinstance(evil, JobFailed) and f"needs {os.system.__module__}.system" in evil.reason
    assert not (emb_dir / "PWNED").exists()


def test_the_folder_defaults_to_a1111s_layout_and_names_are_bounded(tmp_path):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    assert embeddings.default_folder(None, tmp_path / "models" / "Stable-diffusion") is None
    (tmp_path / "embeddings").mkdir()
    found = embeddings.default_folder(None, tmp_path / "models" / "Stable-diffusion")
    assert found == (tmp_path / "embeddings").resolve()
    assert embeddings.default_folder(tmp_path / "elsewhere", tmp_path / "models") == tmp_path / "elsewhere"

    for i in range(embeddings.MAX_PER_REQUEST + 1):
        (tmp_path / "embeddings" / f"e{i}.pt").write_bytes(b"")  # never read: found by name only
    library = embeddings.EmbeddingLibrary(tmp_path / "embeddings")
    assert library.find("e1, e2 and E1") == ("e1", "e2")
    with pytest.raises(embeddings.EmbeddingError, match="at most 16 embeddings"):
        library.find(" ".join(f"e{i}" for i in range(embeddings.MAX_PER_REQUEST + 1)))


def test_an_sdxl_embedding_applies_to_both_text_encoders(tiny_sdxl_dir, tmp_path):
    from engine.runner import Runner
    from engine.tiny_sdxl import TEXT_2_WIDTH

    gen = torch.Generator().manual_seed(2)
    vectors = {
        "clip_l": torch.randn(2, WIDTH, generator=gen),
        "clip_g": torch.randn(2, TEXT_2_WIDTH, generator=gen),
    }
    save_file(vectors, str(tmp_path / "xlstyle.safetensors"))
    r = Runner(tiny_sdxl_dir, device="cpu", max_batch=1, embeddings_dir=tmp_path)
    seen: dict[str, list[torch.Tensor]] = {"clip_l": [], "clip_g": []}
    hooks = [
        encoder.get_input_embeddings().register_forward_hook(
            lambda _m, _a, out, key=key: seen[key].append(out.detach().clone())
        )
        for key, encoder in (("clip_l", r.pipe.text_encoder), ("clip_g", r.pipe.text_encoder_2))
    ]
    try:
        done = r.run([request("x", prompt="a (xlstyle:1.1) house")])["x"]
    finally:
        for hook in hooks:
            hook.remove()
        r.close()
    assert isinstance(done, JobDone), done
    assert _contains_rows(seen["clip_l"], vectors["clip_l"]) and _contains_rows(
        seen["clip_g"], vectors["clip_g"]
    )
