"""AUTOMATIC1111 samplers and schedule types -> diffusers schedulers (the table is in engine/README.md).

Names, aliases, combined names and which pairs can run are in the torch-free :mod:`engine.sampler_names`;
here a resolved (sampler, schedule type) pair becomes a diffusers scheduler on the model's noise schedule.
diffusers is imported only when a scheduler is built.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.sampler_names import (
    AUTOMATIC,
    DEFAULT_SAMPLER,
    SAMPLER_NAMES,
    UnknownSamplerError,
    canonical_sampler,
    resolve,
)

if TYPE_CHECKING:
    from diffusers.configuration_utils import ConfigMixin  # every scheduler's base with from_config()

__all__ = [
    "DEFAULT_SAMPLER",
    "SAMPLER_NAMES",
    "UnknownSamplerError",
    "canonical_sampler",
    "make_scheduler",
    "scheduler_config",
    "uses_noise_seeds",
]

_MULTISTEP = "DPMSolverMultistepScheduler"
# sampler -> (diffusers class name, extra config)
_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": (_MULTISTEP, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # k-diffusion's DPM++ SDE: second-order single-step SDE solver on a Brownian tree (needs torchsde).
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ 2M SDE": (
        _MULTISTEP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    "DPM++ 2M SDE Heun": (
        _MULTISTEP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    # Second-order single-step with fresh noise each step: diffusers' nearest is its SDE variant of the
    # single-step solver (an SDE step rather than k-diffusion's ancestral one; README lists the difference).
    "DPM++ 2S a": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "DPM++ 3M SDE": (_MULTISTEP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
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
assert set(_TABLE) == set(SAMPLER_NAMES)

# schedule type -> config. A1111 takes a sigma list's ends from the model's whole range (sigma at t=999 and
# t=0); diffusers takes them from the spaced timesteps, which span that range only with "linspace". Uniform
# and Normal are linspace over t; SGM Uniform and Simple start at t=999 and drop t=0 (diffusers' "trailing";
# Simple's floor against trailing's round can move a timestep by one when 1000 is not a multiple of the
# steps); A1111's DDIM schedule is diffusers' "leading" with offset 1. Polyexponential at A1111's default
# rho of 1 is exactly Exponential.
_LINSPACE = {"timestep_spacing": "linspace"}
_SCHEDULE_CONFIG: dict[str, dict[str, Any]] = {
    "Uniform": _LINSPACE,
    "Normal": _LINSPACE,
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
    "Karras": {**_LINSPACE, "use_karras_sigmas": True},
    "Exponential": {**_LINSPACE, "use_exponential_sigmas": True},
    "Polyexponential": {**_LINSPACE, "use_exponential_sigmas": True},
    "Beta": {**_LINSPACE, "use_beta_sigmas": True},  # alpha = beta = 0.6, A1111's defaults too
    "KL Optimal": _LINSPACE,  # sigma lists made here (_SIGMA_LISTS)
    "Align Your Steps": _LINSPACE,
    AUTOMATIC: {},  # samplers with their own timesteps: the model's config as it is
}

# Keys of a model's scheduler config that describe the noise schedule it was trained with; everything else
# (the solver settings of whatever scheduler the checkpoint shipped) is dropped before building another one.
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "steps_offset",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)

# Schedule types that run as a sigma list made here (schedule_sigmas), by sampler: its scheduler class has no
# diffusers setting for them.
_EULER_LISTS, _EULER_A_LISTS = "CustomSigmasEulerScheduler", "CustomSigmasEulerAncestralScheduler"
_SIGMA_LISTS: dict[str, tuple[str, frozenset[str]]] = {
    "Euler": (_EULER_LISTS, frozenset({"KL Optimal", "Align Your Steps"})),
    "Euler a": (
        _EULER_A_LISTS,
        frozenset({"Karras", "Exponential", "Polyexponential", "Beta", "KL Optimal", "Align Your Steps"}),
    ),
}

# NVIDIA's Align Your Steps sigmas for SD 1.5 at 10 steps (published with the method; A1111 1.10 uses the
# same), log-linearly interpolated to other step counts.
_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


def ays_sigmas(steps: int) -> list[float]:
    """Align Your Steps: ``steps`` sigmas and a final 0, log-linear between the published ones."""
    import numpy as np

    if steps == len(_AYS_SD15):
        return [*_AYS_SD15, 0.0]
    xs = np.linspace(0, 1, len(_AYS_SD15))
    ys = np.log(np.array(_AYS_SD15[::-1]))
    interpolated = np.exp(np.interp(np.linspace(0, 1, steps), xs, ys))[::-1]
    return [float(s) for s in interpolated] + [0.0]


def kl_optimal_sigmas(steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """KL Optimal (Kynkäänniemi et al.): sigmas evenly spaced in arctan(sigma), ``steps + 1`` of them,
    from ``sigma_max`` down to ``sigma_min`` (A1111 ends there, not at 0)."""
    lo, hi = math.atan(sigma_min), math.atan(sigma_max)
    return [math.tan(i / steps * lo + (1 - i / steps) * hi) for i in range(steps + 1)]


def schedule_sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """The sigma list A1111 computes for a schedule type without a diffusers setting on the scheduler that
    runs it: ``steps`` sigmas from ``sigma_max`` then a final 0 (KL Optimal ends at ``sigma_min``)."""
    import numpy as np

    ramp = np.linspace(0, 1, steps)
    if schedule == "Karras":  # rho = 7, as A1111 and k-diffusion
        lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
        sigmas = (hi + ramp * (lo - hi)) ** 7
    elif schedule in ("Exponential", "Polyexponential"):
        sigmas = np.exp(np.log(sigma_max) + ramp * (np.log(sigma_min) - np.log(sigma_max)))
    elif schedule == "Beta":  # alpha = beta = 0.6, as A1111 and diffusers
        from scipy import stats

        sigmas = sigma_min + stats.beta.ppf(1 - ramp, 0.6, 0.6) * (sigma_max - sigma_min)
    elif schedule == "Align Your Steps":
        return ays_sigmas(steps)
    elif schedule == "KL Optimal":
        return kl_optimal_sigmas(steps, sigma_min, sigma_max)
    else:
        raise ValueError(f"no sigma list for {schedule}")
    return [float(x) for x in sigmas] + [0.0]


def _custom_sigmas_class(cls_name: str, schedule: str) -> type[ConfigMixin]:
    """Euler or Euler a (``cls_name``) computing its sigma list for ``schedule``: the pipelines call
    ``set_timesteps(steps)``. Euler takes a custom list through ``sigmas=``; Euler a has no such parameter,
    so its list and the timesteps of its sigmas replace the ones it set up."""
    import numpy as np
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    def sigmas_for(scheduler: Any, steps: int) -> list[float]:
        model = np.sqrt((1 - scheduler.alphas_cumprod.numpy()) / scheduler.alphas_cumprod.numpy())
        return schedule_sigmas(schedule, steps, float(model[0]), float(model[-1]))

    class CustomSigmasEulerScheduler(EulerDiscreteScheduler):
        def set_timesteps(  # the same call; sigmas filled in when none are given
            self,
            num_inference_steps: int | None = None,
            device: Any = None,
            timesteps: list[int] | None = None,
            sigmas: list[float] | None = None,
        ) -> None:
            if sigmas is None and timesteps is None and num_inference_steps is not None:
                sigmas, num_inference_steps = sigmas_for(self, num_inference_steps), None
            super().set_timesteps(num_inference_steps, device, timesteps, sigmas)

    class CustomSigmasEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
        def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
            super().set_timesteps(num_inference_steps, device)
            sigmas = np.array(sigmas_for(self, num_inference_steps), dtype=np.float32)
            log_model = np.log(np.sqrt((1 - self.alphas_cumprod.numpy()) / self.alphas_cumprod.numpy()))
            steps = np.interp(np.log(sigmas[:-1]), log_model, np.arange(len(log_model))).astype(np.float32)
            self.sigmas = torch.from_numpy(sigmas)  # kept on the CPU, as diffusers does
            self.timesteps = torch.from_numpy(steps).to(device=device)

    return CustomSigmasEulerScheduler if cls_name == _EULER_LISTS else CustomSigmasEulerAncestralScheduler


def _lms_class() -> type[ConfigMixin]:
    """diffusers' LMSDiscreteScheduler integrates its coefficients with scipy; without scipy, a subclass
    does it exactly with Gauss-Legendre quadrature (the integrand is a polynomial of degree order - 1)."""
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
    from diffusers.utils import is_scipy_available

    if is_scipy_available():
        return LMSDiscreteScheduler

    import numpy as np

    class LMSDiscreteSchedulerNoScipy(LMSDiscreteScheduler):
        def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
            nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
            a, b = float(self.sigmas[t]), float(self.sigmas[t + 1])
            taus = (b - a) / 2 * nodes + (a + b) / 2
            values = np.ones_like(taus)
            center = float(self.sigmas[t - current_order])
            for k in range(order):
                if k != current_order:
                    s_k = float(self.sigmas[t - k])
                    values *= (taus - s_k) / (center - s_k)
            return float((b - a) / 2 * np.sum(weights * values))

    return LMSDiscreteSchedulerNoScipy


class SchedulerSpec(NamedTuple):
    cls_name: str  # a diffusers class, or one of _SIGMA_LISTS's (Euler, Euler a with a list made here)
    schedule: str  # the schedule type that runs
    config: dict[str, Any]


def scheduler_config(sampler: str | None, scheduler: str | None, base_config: Any) -> SchedulerSpec:
    """The diffusers class name and config for the pair (before the class drops keys it does not take):
    the model's noise schedule, the sampler's solver settings, the schedule type's spacing or sigma flag.
    Torch-free. Raises :class:`UnknownSamplerError` as :func:`~engine.sampler_names.resolve` does."""
    pair = resolve(sampler, scheduler)
    config = {k: base_config[k] for k in _SCHEDULE_KEYS if k in base_config}
    if config.get("trained_betas") is None:
        config.pop("trained_betas", None)
    cls_name, extra = _TABLE[pair.sampler]
    listed = _SIGMA_LISTS.get(pair.sampler)
    if listed is not None and pair.scheduler in listed[1]:
        cls_name = listed[0]
    return SchedulerSpec(cls_name, pair.scheduler, {**config, **extra, **_SCHEDULE_CONFIG[pair.scheduler]})


def make_scheduler(sampler: str | None, scheduler: str | None, base_config: Any) -> Any:
    """A fresh scheduler for the A1111 ``sampler`` and schedule type ``scheduler`` (None: Automatic) on the
    model's noise schedule (``base_config``: the pipeline's ``scheduler.config``).

    Raises :class:`UnknownSamplerError` for an unknown or refused name, or a pair that cannot run."""
    spec = scheduler_config(sampler, scheduler, base_config)
    key = (spec.cls_name, spec.schedule, repr(sorted(spec.config.items())))
    # Building one runs its set_timesteps over all 1000 training steps (seconds for DPM2 with Karras on a
    # busy CPU, and this runs once per batch): a copy of a cached one is the same fresh scheduler.
    built = _BUILT.get(key)
    if built is None:
        if len(_BUILT) >= 32:
            _BUILT.clear()
        built = _BUILT[key] = _build(spec)
    return copy.deepcopy(built)


_BUILT: dict[tuple[str, str, str], Any] = {}


def _build(spec: SchedulerSpec) -> Any:
    import diffusers

    # DPM++ SDE: diffusers asks its Brownian tree for noise between float32 sigmas that can lie a rounding
    # error outside the float64 interval the tree was built on; torchsde warns then, at every step.
    warnings.filterwarnings("ignore", message=r"Should have (ta>=t0|tb<=t1)", module="torchsde")

    cls: type[ConfigMixin]
    if spec.cls_name == "LMSDiscreteScheduler":
        cls = _lms_class()
    elif spec.cls_name in (_EULER_LISTS, _EULER_A_LISTS):
        cls = _custom_sigmas_class(spec.cls_name, spec.schedule)
    else:
        cls = getattr(diffusers, spec.cls_name)
    accepted = inspect.signature(cls.__init__).parameters
    # A key the class does not take would only be warned about (the single-step solver has no spacing).
    return cls.from_config({k: v for k, v in spec.config.items() if k in accepted})


def uses_noise_seeds(scheduler: Any) -> bool:
    """Whether ``scheduler`` draws its noise from a Brownian tree seeded by ``noise_sampler_seed`` (DPM++
    SDE) rather than from the pipeline's generators: the runner sets one seed per image, so each image's
    noise depends on its own seed only, as A1111 does."""
    return hasattr(scheduler, "noise_sampler_seed")
