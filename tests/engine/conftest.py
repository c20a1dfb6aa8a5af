"""Engine test fixtures: one tiny random-weight model per session, one CPU runner per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def runner(tiny_model: Path):
    from engine.runner import Runner

    r = Runner(tiny_model, device="cpu", max_batch=4, worker_id="test")
    yield r
    r.close()


def request(job_id: str = "j", **kw):
    from engine.protocol import GenerateRequest

    kw.setdefault("prompt", "a photo of a cat")
    kw.setdefault("steps", 2)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    kw.setdefault("seed", 1)
    return GenerateRequest(job_id=job_id, **kw)
