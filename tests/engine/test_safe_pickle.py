"""Pickled checkpoints read with torch's weights-only unpickler (engine/safe_pickle.py): a CompVis .ckpt
loads without any opt-in, a pickle that would run code is refused without running it and names what it
asked for, and ``python -m engine convert`` writes .safetensors from them."""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine import safe_pickle
from engine.__main__ import main
from engine.convert import convert
from engine.loading import ModelLoadError, load_pipeline, resolve_model


class _RunsCode:
    """Unpickling this calls os.system: what a malicious .ckpt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


_LIGHTNING = (
    "pytorch_lightning",
    "pytorch_lightning.callbacks",
    "pytorch_lightning.callbacks.model_checkpoint",
)


def _lightning_callback() -> object:
    """An object pickled as PyTorch Lightning's ModelCheckpoint, as SD 1.4-era .ckpt files carry one (the
    class is made up here: Lightning is not installed, and the loader must not need it)."""
    for parent in _LIGHTNING[:-1]:
        sys.modules[parent] = types.ModuleType(parent)
    module = types.ModuleType(_LIGHTNING[-1])

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    callback = ModelCheckpoint()
    callback.__dict__.update(monitor=None, best_model_score=np.float64(0.25))
    return callback


@pytest.fixture(scope="module")
def ckpts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import StableDiffusionPipeline

    from engine.checkpoint import to_original_state_dict

    d = tmp_path_factory.mktemp("ckpts")
    sd = to_original_state_dict(StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True))
    try:
        callback = _lightning_callback()
        # The CompVis layout as the original training code saved it: weights under "state_dict", beside
        # the step counter and the Lightning callback state.
        torch.save(
            {"state_dict": sd, "global_step": 470000, "epoch": 6, "callbacks": {"ModelCheckpoint": callback}},
            d / "compvis.ckpt",
        )
    finally:
        for name in _LIGHTNING:
            sys.modules.pop(name, None)
    torch.save({"state_dict": sd, "evil": _RunsCode(d / "PWNED")}, d / "evil.ckpt")
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1e-4)}, d / "namespace.ckpt")
    (d / "truncated.ckpt").write_bytes((d / "compvis.ckpt").read_bytes()[:4096])
    return d


def test_a_compvis_ckpt_loads_without_any_opt_in(tiny_model, ckpts):
    # More than torch's own weights-only list allows: the loader's inert stand-ins take the rest.
    needs = torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpts / "compvis.ckpt"))
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in needs
    pipe = load_pipeline(resolve_model(str(ckpts / "compvis.ckpt")), single_file_config=tiny_model)
    ref = load_pipeline(resolve_model(str(tiny_model)))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ref, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tiny_model, ckpts, tmp_path, capsys):
    evil = resolve_model(str(ckpts / "evil.ckpt"))
    with pytest.raises(ModelLoadError) as refused:
        load_pipeline(evil, single_file_config=tiny_model)
    assert f"{os.system.__module__}.system" in str(refused.value)
    assert "ALLOW_PICKLE_CHECKPOINTS=true" in str(refused.value)
    with pytest.raises(safe_pickle.PickleRefused):
        convert(ckpts / "evil.ckpt", ckpts / "evil.safetensors")
    # The command line says so in one line, not a traceback.
    out = tmp_path / "x.png"
    args = ["--model", str(ckpts / "evil.ckpt"), "--device", "cpu", "--single-file-config", str(tiny_model)]
    assert main(["generate", "a cat", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("engine generate: refusing to load evil.ckpt"), err
    assert not (ckpts / "PWNED").exists()  # nothing of the file ran
    assert not (ckpts / "evil.safetensors").exists()


def test_a_ckpt_needing_another_global_is_refused_naming_it_unless_allowed(tiny_model, ckpts):
    source = resolve_model(str(ckpts / "namespace.ckpt"))
    with pytest.raises(ModelLoadError, match=r"namespace\.ckpt: .*needs argparse\.Namespace.*ALLOW_PICKLE"):
        load_pipeline(source, single_file_config=tiny_model)
    # The opt-in reads it with the full unpickler (the admin trusts the file).
    pipe = load_pipeline(source, single_file_config=tiny_model, allow_pickle=True)
    assert pipe.unet is not None


class _Bomb:
    """Unpickling this asks bytearray for 10 TB: torch's weights-only unpickler allows bytearray."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (bytearray, (10**13,))


def test_a_broken_oversized_or_memory_bomb_pickle_gives_a_clear_error(ckpts, tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Bomb()}, tmp_path / "bomb.ckpt")
    torch.save({"x": _Bomb()}, tmp_path / "bomb-legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("bomb.ckpt", "bomb-legacy.pt"):
        with pytest.raises(safe_pickle.PickleRefused, match=r"needs __builtin__\.bytearray"):
            safe_pickle.load(tmp_path / name)
    with pytest.raises(safe_pickle.PickleLoadError, match=r"truncated\.ckpt is not a readable PyTorch"):
        safe_pickle.load(ckpts / "truncated.ckpt")
    with pytest.raises(safe_pickle.PickleLoadError, match=r"compvis.ckpt is .* GB, over the"):
        safe_pickle.load(ckpts / "compvis.ckpt", max_bytes=1024)


def test_convert_round_trips_and_never_overwrites_unasked(ckpts, tmp_path, capsys):
    dest = tmp_path / "compvis.safetensors"
    assert main(["convert", str(ckpts / "compvis.ckpt"), str(dest)]) == 0
    assert capsys.readouterr().out.strip().startswith(str(dest))
    original = safe_pickle.state_dict(safe_pickle.load(ckpts / "compvis.ckpt"))
    written = load_file(str(dest))
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)

    dest.write_bytes(b"keep me")
    assert main(["convert", str(ckpts / "compvis.ckpt"), str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --force" in err and dest.read_bytes() == b"keep me"
    assert main(["convert", "--force", str(ckpts / "compvis.ckpt"), str(dest)]) == 0
    assert load_file(str(dest)).keys() == original.keys()

    # A refusal is one line too, not a traceback.
    assert main(["convert", str(ckpts / "namespace.ckpt"), str(tmp_path / "n.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argparse.Namespace" in err


def test_convert_writes_tensors_that_share_memory(tmp_path):
    weight = torch.randn(4, 4)
    torch.save({"state_dict": {"a": weight, "tied": weight, "row": weight[1]}}, tmp_path / "tied.pt")
    assert convert(tmp_path / "tied.pt", tmp_path / "tied.safetensors") == 3
    out = load_file(str(tmp_path / "tied.safetensors"))
    assert all(torch.equal(out[k], weight) for k in ("a", "tied")) and torch.equal(out["row"], weight[1])
