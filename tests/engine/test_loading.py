"""Every loader path: diffusers folder, single files (.safetensors, .ckpt by the safe unpickler), MODELS_DIR
names per request, cached hub ids, and failures that name the file while the worker keeps its model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.loading import (
    ModelLoadError,
    load_pipeline,
    model_hash,
    resolve_model,
    resolve_model_name,
)
from engine.model_files import list_models
from engine.pnginfo import parse_parameters, read_png_parameters
from engine.protocol import JobDone, JobFailed

from .conftest import request
from .outputs import assert_same_image, pixels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models_dir(tiny_model, tmp_path_factory):
    """MODELS_DIR as A1111 users keep it: single files, plus one diffusers folder."""
    from diffusers import StableDiffusionPipeline

    from engine.checkpoint import save_single_file

    d = tmp_path_factory.mktemp("models-dir")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    save_single_file(pipe, d / "tiny-file.safetensors")
    save_single_file(pipe, d / "tiny-pickle.ckpt")
    shutil.copytree(tiny_model, d / "tiny-folder")
    (d / "broken.safetensors").write_bytes(b"this is not a checkpoint")
    (d / "notes.txt").write_text("ignored")
    return d


def test_resolve_model_kinds(tiny_model, models_dir):
    assert resolve_model(str(tiny_model)).kind == "folder"
    src = resolve_model("tiny-file", models_dir)
    assert (src.kind, src.name) == ("file", "tiny-file")
    assert resolve_model("tiny-file.safetensors", models_dir).location == src.location
    assert resolve_model("tiny-file [0123456789]", models_dir).location == src.location  # A1111 "name [hash]"
    assert resolve_model("tiny-folder", models_dir).kind == "folder"
    assert resolve_model("org/some-model").kind == "hub"
    # Pickles are listed too: they load through the safe unpickler (engine/safe_pickle.py).
    assert list_models(models_dir) == ["broken", "tiny-file", "tiny-folder", "tiny-pickle"]
    with pytest.raises(ModelLoadError, match="available: broken, tiny-file"):
        resolve_model("nope", models_dir)
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model("../etc", models_dir)
    # what a request may name: only entries of MODELS_DIR, never a path or a hub id
    assert resolve_model_name("tiny-file", models_dir).kind == "file"
    for name in (str(tiny_model), "org/some-model", "../models-dir0/tiny-file", ".hidden", "nope"):
        with pytest.raises(ModelLoadError, match="not found in MODELS_DIR"):
            resolve_model_name(name, models_dir)
    with pytest.raises(ModelLoadError, match="no MODELS_DIR"):
        resolve_model_name("tiny-file", None)


def test_single_file_checkpoint_round_trips(tiny_model, models_dir):
    src = resolve_model("tiny-file", models_dir)
    pipe = load_pipeline(src, single_file_config=tiny_model)
    ref = load_pipeline(resolve_model(str(tiny_model)))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ref, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert pipe.safety_checker is None


def test_pickle_checkpoints_load_through_the_safe_unpickler(tiny_model, models_dir):
    # Tensors only: no opt-in needed (tests/engine/test_safe_pickle.py has the refusals).
    src = resolve_model("tiny-pickle", models_dir)
    pipe = load_pipeline(src, single_file_config=tiny_model)
    assert pipe.unet is not None


def test_broken_file_fails_with_its_name(tiny_model, models_dir):
    with pytest.raises(ModelLoadError, match="broken"):
        load_pipeline(resolve_model("broken", models_dir), single_file_config=tiny_model)


def test_requests_pick_models_by_name_and_failures_keep_the_model(tiny_model, models_dir):
    from engine.runner import Runner

    r = Runner(tiny_model, device="cpu", models_dir=models_dir, single_file_config=tiny_model)
    try:
        base = r.run([request("base", seed=3)])["base"]
        res = r.run([request("file", seed=3, model="tiny-file")])["file"]
        assert isinstance(res, JobDone) and res.model == "tiny-file"
        info = parse_parameters(read_png_parameters(res.images[0].png))
        assert info["Model"] == "tiny-file"
        assert info["Model hash"] == model_hash(models_dir / "tiny-file.safetensors")
        # same weights (bit for bit: test_single_file_checkpoint_round_trips), same seed: same picture
        assert_same_image(pixels(res), pixels(base))

        bad = r.run([request("bad", model="broken")])["bad"]
        assert isinstance(bad, JobFailed) and "broken" in bad.reason
        assert r.model_name == "tiny-file"  # the model it had stays loaded
        pickle = r.run([request("pk", model="tiny-pickle")])["pk"]
        assert isinstance(pickle, JobDone) and pickle.model == "tiny-pickle"  # weights only: loads safely
        again = r.run([request("default", seed=3)])["default"]  # model=None: back to the default
        assert isinstance(again, JobDone) and again.model == "tiny"
        folder = r.run([request("folder", model="tiny-folder")])["folder"]
        assert isinstance(folder, JobDone) and folder.model == "tiny-folder"

        # the new model does not fit on the device, even alone: the request fails, the old model comes back
        original_place, current = r.slot._place, r.slot.pipe

        def place(pipe):
            if pipe is not current:
                raise RuntimeError("CUDA out of memory (simulated)")
            original_place(pipe)

        r.slot._place = place
        moved = r.run([request("nofit", model="tiny-file")])["nofit"]
        assert isinstance(moved, JobFailed) and "could not move model tiny-file" in moved.reason
        assert r.model_name == "tiny-folder"
        del r.slot._place
        assert isinstance(r.run([request("still", model="tiny-folder")])["still"], JobDone)
    finally:
        r.close()


def test_cached_hub_id_loads_offline_and_generate_cli(tiny_model, tmp_path):
    """A hub id already in the Hugging Face cache loads with no network; `python -m engine generate`."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--someone--tiny-sd"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    out = tmp_path / "img.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "generate",
            "a lighthouse",
            "--model",
            "someone/tiny-sd",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--seed",
            "5",
            "--steps",
            "2",
            "--size",
            "64x96",
            "--sampler",
            "Euler a",
            "--cfg",
            "5",
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    info = parse_parameters(read_png_parameters(out.read_bytes()))
    assert info["Prompt"] == "a lighthouse" and info["Seed"] == "5" and info["Sampler"] == "Euler a"
    assert (info["Size-1"], info["Size-2"]) == ("64", "96") and info["Model"] == "someone/tiny-sd"
    assert b"step" in proc.stderr  # the progress bar


def test_uncached_hub_id_offline_names_the_model():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelLoadError, match="someone/absent"):
        load_pipeline(resolve_model("someone/absent"))
