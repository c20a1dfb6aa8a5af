"""SD 2.x single files (engine/tiny_sd2.py): written in the original layout with OpenCLIP's names, told apart
by their contents, loaded offline, v-prediction unless their sidecar says otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.families import Family, detect_family


def test_an_sd2_single_file_loads_offline_with_v_prediction_or_its_sidecars(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from engine.checkpoint import save_single_file
    from engine.loading import load_pipeline, pipeline_family, resolve_model
    from engine.tiny_sd2 import make_tiny_sd2

    folder = make_tiny_sd2(tmp_path / "tiny-sd2")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    path = save_single_file(pipe, tmp_path / "models" / "sd21.safetensors")
    assert detect_family(folder) is detect_family(path) is Family.SD2

    loaded = load_pipeline(resolve_model(str(path)), single_file_config=folder)
    assert pipeline_family(loaded) is Family.SD2
    assert loaded.scheduler.config.prediction_type == "v_prediction"  # an SD 2.x file: the 768-v models
    ours, theirs = loaded.text_encoder.state_dict(), pipe.text_encoder.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # through OpenCLIP's names and back

    (tmp_path / "models" / "sd21.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    base = load_pipeline(resolve_model(str(path)), single_file_config=folder)
    assert base.scheduler.config.prediction_type == "epsilon"  # 2.1-base, as its sidecar says
