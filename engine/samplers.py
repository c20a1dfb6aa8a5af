"""AUTOMATIC1111 sampler names -> diffusers schedulers (see the table in PRODUCT.md).

``SAMPLER_NAMES`` is re-exported from the torch-free :mod:`engine.sampler_names`; diffusers is imported only
when a scheduler is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sampler_names import DEFAULT_SAMPLER, SAMPLER_NAMES, UnknownSamplerError, canonical_sampler

if TYPE_CHECKING:
    from diffusers.configuration_utils import ConfigMixin  # every scheduler's base with from_config()

__all__ = ["DEFAULT_SAMPLER", "SAMPLER_NAMES", "UnknownSamplerError", "canonical_sampler", "make_scheduler"]

# name -> (diffusers class name, extra config)
_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
assert set(_TABLE) == set(SAMPLER_NAMES)

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


def make_scheduler(name: str | None, base_config: Any) -> Any:
    """A fresh scheduler for the A1111 sampler ``name`` on the model's noise schedule (``base_config``: the
    pipeline's ``scheduler.config``). Raises :class:`UnknownSamplerError` for an unknown name."""
    import diffusers

    cls_name, extra = _TABLE[canonical_sampler(name)]
    cls: type[ConfigMixin] = (
        _lms_class() if cls_name == "LMSDiscreteScheduler" else getattr(diffusers, cls_name)
    )
    config = {k: base_config[k] for k in _SCHEDULE_KEYS if k in base_config}
    if config.get("trained_betas") is None:
        config.pop("trained_betas", None)
    return cls.from_config({**config, **extra})
