"""Each (sampler, schedule type) pair builds the diffusers scheduler it stands for; every runnable sampler
renders on the tiny model; DPM++ SDE's noise follows each image's seed; pairs that differ are not batched."""

from __future__ import annotations

import inspect
import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.protocol import JobDone, JobFailed
from engine.sampler_names import SAMPLER_NAMES, SAMPLERS, SCHEDULE_NAMES, UnknownSamplerError
from engine.samplers import ays_sigmas, make_scheduler, scheduler_config

from .conftest import request

ROOT = Path(__file__).resolve().parents[2]
SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # SD 1.x's noise schedule
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
MULTI = "DPMSolverMultistepScheduler"
# sampler -> diffusers class and the solver settings that make it that sampler
CLASSES = {
    "DPM++ 2M": (MULTI, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ 2M SDE": (
        MULTI,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    "DPM++ 2M SDE Heun": (
        MULTI,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 3M SDE": (MULTI, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
# schedule type -> the config that gives it (flags left out are False)
FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SCHEDULES = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Normal": {"timestep_spacing": "linspace"},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
    "Karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Polyexponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
    "KL Optimal": {"timestep_spacing": "linspace"},
    "Align Your Steps": {"timestep_spacing": "linspace"},
    "Automatic": {"timestep_spacing": "leading"},  # the model's own (the tiny model's PNDM config)
}
# pairs whose sigma list is made here: the scheduler class has no diffusers setting for them
LISTS = {("Euler", t): "CustomSigmasEulerScheduler" for t in ("KL Optimal", "Align Your Steps")} | {
    ("Euler a", t): "CustomSigmasEulerAncestralScheduler"
    for t in ("Karras", "Exponential", "Polyexponential", "Beta", "KL Optimal", "Align Your Steps")
}
RUNNABLE = [
    (s.name, t)
    for s in SAMPLERS
    if s.refused is None
    for t in SCHEDULE_NAMES
    if t in s.schedules or t == "Automatic"
]


def test_sampler_names_import_without_torch():
    code = "import sys, engine.sampler_names, engine.pnginfo; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()


def test_every_pair_gets_its_class_and_config(runner):
    base = runner.slot.base_scheduler_config  # the model's own: pipe.scheduler is the last batch's
    assert set(CLASSES) == set(SAMPLER_NAMES)
    for sampler, schedule in RUNNABLE:
        spec = scheduler_config(sampler, schedule, base)
        cls, fields = CLASSES[sampler]
        assert spec.cls_name == LISTS.get((sampler, spec.schedule), cls), (sampler, schedule)
        expected = {**fields, **SCHEDULES[spec.schedule]}
        for key in FLAGS:
            expected.setdefault(key, False)
        for key, value in expected.items():
            assert spec.config.get(key, False) == value, (sampler, schedule, key)
        assert spec.config["beta_schedule"] == "scaled_linear" and spec.config["beta_end"] == 0.012
    assert len(RUNNABLE) > 100


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("DPM2", "Beta"),
        ("DPM++ 2S a", "Exponential"),
        ("Euler a", "SGM Uniform"),
        ("DPM++ 2M SDE Heun", None),
    ],
)
def test_diffusers_takes_the_config(runner, sampler, schedule):
    spec = scheduler_config(sampler, schedule, runner.slot.base_scheduler_config)
    sched = make_scheduler(sampler, schedule, runner.slot.base_scheduler_config)
    assert type(sched).__name__ == spec.cls_name
    taken = inspect.signature(type(sched).__init__).parameters
    assert set(spec.config) - set(taken) <= {"timestep_spacing", "steps_offset"}  # none in single-step
    for key in taken & spec.config.keys():
        assert sched.config[key] == spec.config[key], key
    assert make_scheduler(sampler, schedule, runner.slot.base_scheduler_config) is not sched  # a fresh one


def test_custom_sigma_lists():
    sched = make_scheduler("Euler", "Align Your Steps", SD15)
    sched.set_timesteps(11)  # A1111 uses NVIDIA's published list as is at 11 steps, else interpolates
    assert [float(s) for s in sched.sigmas] == pytest.approx([*AYS_SD15, 0.0], rel=1e-5)
    sched.set_timesteps(10)
    assert [float(s) for s in sched.sigmas] == pytest.approx(ays_sigmas(10), rel=1e-5)
    sched.set_timesteps(20)
    sigmas = [float(s) for s in sched.sigmas]
    assert len(sigmas) == 21 and sigmas[0] == pytest.approx(14.615, abs=1e-3) and sigmas[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(sigmas))
    kl = make_scheduler("Euler", "KL Optimal", SD15)
    kl.set_timesteps(8)
    kl_sigmas = [float(s) for s in kl.sigmas]
    # evenly spaced in arctan(sigma), from the model's sigma_max down to its sigma_min (not 0), as A1111
    assert kl_sigmas[0] == pytest.approx(14.615, abs=1e-3) and kl_sigmas[-1] == pytest.approx(
        0.0292, abs=1e-3
    )
    steps = [math.atan(a) - math.atan(b) for a, b in itertools.pairwise(kl_sigmas)]
    assert len(kl_sigmas) == 9 and max(steps) == pytest.approx(min(steps), rel=1e-3)


def test_euler_a_runs_a_karras_list():
    sched = make_scheduler("Euler a", "Karras", SD15)
    sched.set_timesteps(10)
    sigmas = [float(s) for s in sched.sigmas]
    lo, hi = 0.029168 ** (1 / 7), 14.6146 ** (1 / 7)  # SD 1.x sigma at t=0 and t=999
    expected = [(hi + i / 9 * (lo - hi)) ** 7 for i in range(10)] + [0.0]
    assert sigmas == pytest.approx(expected, rel=1e-3)
    timesteps = [float(t) for t in sched.timesteps]  # the UNet sees each sigma's own timestep
    assert len(timesteps) == 10 and timesteps[0] == pytest.approx(999, abs=0.5)
    assert timesteps[-1] == pytest.approx(0, abs=0.5) and all(a > b for a, b in itertools.pairwise(timesteps))


def test_unrunnable_pairs_are_refused_by_the_builder_too():
    with pytest.raises(UnknownSamplerError, match="runs its own timesteps"):
        make_scheduler("DDIM", "Karras", {})
    with pytest.raises(UnknownSamplerError, match="nearest that runs is `DPM\\+\\+ 2M`"):
        make_scheduler("DPM adaptive", None, {})


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_renders(runner, name):
    res = runner.run([request("s", sampler=name, steps=2, width=64, height=64)])["s"]
    assert isinstance(res, JobDone), getattr(res, "reason", res)


def test_a_non_default_pair_renders_and_sde_noise_follows_the_seed(runner):
    """DPM++ SDE with the Beta schedule, twice from the same seed: the same PNGs. The Brownian tree's seed is
    set per image (diffusers would draw a random one), so an image depends on its seed only. And Euler with
    Align Your Steps and Euler a with Karras (sigma lists made here) render."""
    first = runner.run([request("a", sampler="DPM++ SDE", scheduler="Beta", seed=7, count=2)])["a"]
    again = runner.run([request("b", sampler="DPM++ SDE", scheduler="Beta", seed=7, count=2)])["b"]
    assert isinstance(first, JobDone) and isinstance(again, JobDone), getattr(first, "reason", first)
    assert first.images == again.images
    for sampler, schedule in (("Euler", "Align Your Steps"), ("Euler a", "Karras")):
        res = runner.run([request("c", sampler=sampler, scheduler=schedule, steps=3)])["c"]
        assert isinstance(res, JobDone), getattr(res, "reason", res)


def test_unknown_names_fail_the_request_naming_the_nearest(runner):
    res = runner.run([request("s", sampler="Euler z")])["s"]
    assert isinstance(res, JobFailed) and "did you mean `Euler a`?" in res.reason
    res = runner.run([request("t", sampler="LMS", scheduler="KL Optimal")])["t"]
    assert isinstance(res, JobFailed) and "`Euler` and `Euler a` run `KL Optimal`" in res.reason


def test_the_batch_key_holds_the_schedule_that_runs_and_clip_skip(runner):
    key = runner.prepare(request("a", sampler="DPM++ 2M Karras")).key
    assert (key.sampler, key.scheduler, key.clip_skip) == ("DPM++ 2M", "Karras", 0)
    # Automatic is DPM++ 2M's Karras: one batch; another schedule type or clip skip: another batch
    assert runner.prepare(request("b", sampler="DPM++ 2M")).key == key
    assert runner.prepare(request("c", sampler="DPM++ 2M", scheduler="Exponential")).key != key
    assert runner.prepare(request("d", sampler="DPM++ 2M", clip_skip=2)).key != key


def test_lms_coefficients_match_numerical_integration():
    import numpy as np

    from engine.samplers import _lms_class

    sched = _lms_class().from_config(make_scheduler("LMS", None, {"beta_schedule": "scaled_linear"}).config)
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
