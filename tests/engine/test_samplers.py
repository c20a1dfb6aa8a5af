"""Every A1111 sampler name runs on the tiny model; unknown names list the valid ones; torch-free names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.protocol import DEFAULT_SAMPLER, JobDone, JobFailed
from engine.sampler_names import SAMPLER_NAMES, UnknownSamplerError, canonical_sampler
from engine.samplers import make_scheduler

from .conftest import request

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False},
    ),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}


def test_names_are_a1111s_and_default():
    assert isinstance(SAMPLER_NAMES, tuple) and DEFAULT_SAMPLER in SAMPLER_NAMES
    assert len(set(SAMPLER_NAMES)) == len(SAMPLER_NAMES) == 19
    assert canonical_sampler("euler A") == "Euler a" and canonical_sampler(None) == DEFAULT_SAMPLER
    with pytest.raises(UnknownSamplerError, match="valid samplers: DPM\\+\\+ 2M Karras"):
        canonical_sampler("k_euler")


def test_sampler_names_import_without_torch():
    code = "import sys, engine.sampler_names, engine.pnginfo; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()


def test_scheduler_mapping(runner):
    base = runner.pipe.scheduler.config
    for name, (cls, fields) in EXPECTED.items():
        sched = make_scheduler(name, base)
        assert type(sched).__name__.startswith(cls), name
        for key, value in fields.items():
            assert sched.config[key] == value, (name, key)
        assert sched.config.beta_schedule == "scaled_linear" and sched.config.beta_end == 0.012


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_renders(runner, name):
    res = runner.run([request("s", sampler=name, steps=2, width=64, height=64)])["s"]
    assert isinstance(res, JobDone), getattr(res, "reason", res)


def test_unknown_sampler_fails_the_request(runner):
    res = runner.run([request("s", sampler="Euler z")])["s"]
    assert isinstance(res, JobFailed) and all(n in res.reason for n in SAMPLER_NAMES)


def test_lms_coefficients_match_numerical_integration():
    import numpy as np

    from engine.samplers import _lms_class

    sched = _lms_class().from_config(make_scheduler("LMS", {"beta_schedule": "scaled_linear"}).config)
    sched.set_timesteps(10)
    for t in range(3, 8):
        for cur in range(4):
            a, b = float(sched.sigmas[t]), float(sched.sigmas[t + 1])
            taus = np.linspace(a, b, 20001)
            vals = np.ones_like(taus)
            for k in range(4):
                if k != cur:
                    vals *= (taus - float(sched.sigmas[t - k])) / (
                        float(sched.sigmas[t - cur]) - float(sched.sigmas[t - k])
                    )
            expected = np.trapezoid(vals, taus)
            assert abs(sched.get_lms_coefficient(4, t, cur) - expected) < 1e-6 * max(1, abs(expected))
