"""The sampler names the engine accepts: AUTOMATIC1111's names. Torch-free, so the bot can import it for
slash-command choices without loading the GPU stack (the scheduler mapping is in :mod:`engine.samplers`)."""

from __future__ import annotations

DEFAULT_SAMPLER = "DPM++ 2M Karras"

SAMPLER_NAMES: tuple[str, ...] = (
    "DPM++ 2M Karras",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DPM2",
    "DPM2 Karras",
    "DPM2 a",
    "DPM2 a Karras",
    "Euler",
    "Euler a",
    "Heun",
    "LMS",
    "LMS Karras",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)

_BY_FOLDED = {name.casefold(): name for name in SAMPLER_NAMES}


class UnknownSamplerError(ValueError):
    """A sampler name that is not one of :data:`SAMPLER_NAMES`; the message lists the valid ones."""


def canonical_sampler(name: str | None) -> str:
    """The canonical spelling of ``name`` (case and surrounding spaces ignored); ``None``/empty: the default.

    Raises :class:`UnknownSamplerError` listing the valid names."""
    if name is None or not name.strip():
        return DEFAULT_SAMPLER
    found = _BY_FOLDED.get(" ".join(name.split()).casefold())
    if found is None:
        raise UnknownSamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLER_NAMES)}")
    return found
