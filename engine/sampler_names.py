"""AUTOMATIC1111 1.10's sampler and schedule-type names, and how a (sampler, schedule type) pair resolves.

Torch-free, so the bot can import it for slash-command choices and early refusals without loading the GPU
stack. Which diffusers scheduler runs each pair is in :mod:`engine.samplers`; the tables are learned from
A1111 1.10 (``sd_samplers_kdiffusion``, ``sd_samplers_timesteps``, ``sd_samplers_lcm``, ``sd_schedulers``
and ``sd_samplers.get_sampler_and_scheduler``), written here in this project's own form.

- Since A1111 1.9 a sampler and its schedule type are two fields (``Sampler: DPM++ 2M``, ``Schedule type:
  Karras``). The older combined names (``DPM++ 2M Karras``, ``Euler Karras``) are still read: a schedule
  type's label, name or alias at the end of the sampler name is split off and wins over the field.
- ``Automatic`` lets the sampler choose: ``DPM++ 2M``, ``DPM++ SDE``, ``DPM++ 2S a``, ``DPM2`` and
  ``DPM2 a`` run Karras; ``DPM++ 2M SDE``, ``DPM++ 2M SDE Heun`` and ``DPM++ 3M SDE`` run Exponential; the
  other k-diffusion samplers run the model's own (Uniform) sigmas. DDIM, PLMS and UniPC run their own
  timesteps (A1111 ignores the schedule type for them), and so does LCM here.
- A1111 falls back to its default sampler, and to Automatic, for a name it does not know; here an unknown
  name is refused with the nearest known one, so nothing a member asked for is silently replaced.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

AUTOMATIC = "Automatic"


@dataclass(frozen=True, slots=True)
class SamplerInfo:
    name: str
    aliases: tuple[str, ...] = ()
    default_schedule: str | None = None  # what Automatic means for it (None: the model's own sigmas)
    own_timesteps: bool = False  # DDIM/PLMS/UniPC/LCM: no schedule type applies
    refused: str | None = None  # why diffusers cannot run it, ending with the nearest working choice
    schedules: frozenset[str] = frozenset()  # the schedule types its diffusers scheduler can run


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    label: str
    name: str  # A1111's internal name (``sgm_uniform``), also accepted
    aliases: tuple[str, ...] = ()


# What diffusers' schedulers can run (engine/samplers.py sets them up): the timestep spacings (Uniform,
# Normal, SGM Uniform, Simple, DDIM), and sigma lists (Karras, Exponential, Polyexponential, Beta) where the
# scheduler has diffusers' flag for them.
_SPACINGS = frozenset({"Uniform", "Normal", "SGM Uniform", "Simple", "DDIM"})
_SIGMAS = frozenset({"Karras", "Exponential", "Polyexponential", "Beta"})
_ALL = _SPACINGS | _SIGMAS
_CUSTOM = frozenset({"KL Optimal", "Align Your Steps"})  # sigma lists made in engine/samplers.py

# A1111 1.10's sampler list, in its order (the first is its default sampler).
SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", ("k_dpmpp_2m",), "Karras", schedules=_ALL),
    SamplerInfo("DPM++ SDE", ("k_dpmpp_sde",), "Karras", schedules=_ALL),
    SamplerInfo("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "Exponential", schedules=_ALL),
    SamplerInfo("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "Exponential", schedules=_ALL),
    SamplerInfo("DPM++ 2S a", ("k_dpmpp_2s_a",), "Karras", schedules=_SIGMAS | {"Uniform"}),
    SamplerInfo("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "Exponential", schedules=_ALL),
    SamplerInfo("Euler a", ("k_euler_a", "k_euler_ancestral"), schedules=_ALL | _CUSTOM),
    SamplerInfo("Euler", ("k_euler",), schedules=_ALL | _CUSTOM),
    SamplerInfo("LMS", ("k_lms",), schedules=_ALL),
    SamplerInfo("Heun", ("k_heun",), schedules=_ALL),
    SamplerInfo("DPM2", ("k_dpm_2",), "Karras", schedules=_ALL),
    SamplerInfo("DPM2 a", ("k_dpm_2_a",), "Karras", schedules=_ALL),
    SamplerInfo(
        "DPM fast",
        ("k_dpm_fast",),
        refused="DPM fast (k-diffusion's fixed-step DPM-Solver) has no diffusers scheduler; "
        "the nearest that runs is `DPM++ 2M`",
    ),
    SamplerInfo(
        "DPM adaptive",
        ("k_dpm_ad",),
        refused="DPM adaptive chooses its own step count, which diffusers' fixed-step loop cannot run; "
        "the nearest that runs is `DPM++ 2M`",
    ),
    SamplerInfo(
        "Restart",
        ("restart",),
        "Karras",
        refused="Restart (Heun steps with renoising jumps back) has no diffusers scheduler; "
        "the nearest that runs is `Heun` with the Karras schedule type",
    ),
    SamplerInfo("DDIM", ("ddim",), own_timesteps=True),
    SamplerInfo(
        "DDIM CFG++",
        ("ddim_cfgpp",),
        own_timesteps=True,
        refused="DDIM CFG++ changes how guidance is combined inside each step, which diffusers' "
        "DDIM does not do; the nearest that runs is `DDIM`",
    ),
    SamplerInfo("PLMS", ("plms",), own_timesteps=True),
    SamplerInfo("UniPC", ("unipc",), own_timesteps=True),
    SamplerInfo("LCM", ("k_lcm",), own_timesteps=True),
)

# A1111 1.10's schedule types, in its order (the order matters when a combined name is split).
SCHEDULES: tuple[ScheduleInfo, ...] = (
    ScheduleInfo(AUTOMATIC, "automatic"),
    ScheduleInfo("Uniform", "uniform"),
    ScheduleInfo("Karras", "karras"),
    ScheduleInfo("Exponential", "exponential"),
    ScheduleInfo("Polyexponential", "polyexponential"),
    ScheduleInfo("SGM Uniform", "sgm_uniform", ("SGMUniform",)),
    ScheduleInfo("KL Optimal", "kl_optimal"),
    ScheduleInfo("Align Your Steps", "align_your_steps"),
    ScheduleInfo("Simple", "simple"),
    ScheduleInfo("Normal", "normal"),
    ScheduleInfo("DDIM", "ddim"),
    ScheduleInfo("Beta", "beta"),
)

# Aliases of the combined entries A1111 had before 1.9 (gone in 1.10's list, still found in old scripts and
# API calls): read as the combined name they stood for.
_OLD_ALIASES = {
    "k_lms_ka": "LMS Karras",
    "k_dpm_2_ka": "DPM2 Karras",
    "k_dpm_2_a_ka": "DPM2 a Karras",
    "k_dpmpp_2s_a_ka": "DPM++ 2S a Karras",
    "k_dpmpp_2m_ka": "DPM++ 2M Karras",
    "k_dpmpp_sde_ka": "DPM++ SDE Karras",
    "k_dpmpp_2m_sde_ka": "DPM++ 2M SDE Karras",
    "k_dpmpp_2m_sde_exp": "DPM++ 2M SDE Exponential",
    "k_dpmpp_2m_sde_heun_ka": "DPM++ 2M SDE Heun Karras",
    "k_dpmpp_2m_sde_heun_exp": "DPM++ 2M SDE Heun Exponential",
    "k_dpmpp_3m_sde_ka": "DPM++ 3M SDE Karras",
    "k_dpmpp_3m_sde_exp": "DPM++ 3M SDE Exponential",
}

DEFAULT_SAMPLER = SAMPLERS[0].name  # "DPM++ 2M", which Automatic runs with Karras (A1111 1.10's default)

SAMPLER_NAMES: tuple[str, ...] = tuple(s.name for s in SAMPLERS if s.refused is None)  # the runnable ones
REFUSED_SAMPLERS: tuple[str, ...] = tuple(s.name for s in SAMPLERS if s.refused is not None)
SCHEDULE_NAMES: tuple[str, ...] = tuple(s.label for s in SCHEDULES)

_SAMPLER = {s.name: s for s in SAMPLERS}
_SAMPLER_BY_FOLDED: dict[str, str] = {}
for _s in SAMPLERS:
    for _n in (_s.name, *_s.aliases):
        _SAMPLER_BY_FOLDED[_n.casefold()] = _s.name
_SCHEDULE = {s.label: s for s in SCHEDULES}
_SCHEDULE_SUFFIXES = sorted(
    ((" " + n.casefold(), s.label) for s in SCHEDULES for n in (s.label, s.name, *s.aliases)),
    key=lambda pair: -len(pair[0]),
)
_SCHEDULE_EXACT = {n: s.label for s in SCHEDULES for n in (s.label, s.name)}
_SCHEDULE_BY_FOLDED = {n.casefold(): s.label for s in SCHEDULES for n in (s.label, s.name, *s.aliases)}


class UnknownSamplerError(ValueError):
    """A sampler or schedule type that is unknown, cannot run, or cannot run together; the message says why
    and names the nearest choice that works (it is shown to members as is)."""


@dataclass(frozen=True, slots=True)
class Resolved:
    sampler: str  # A1111 1.10's name, e.g. "DPM++ 2M"
    scheduler: str  # the schedule type that runs: Automatic only for samplers with their own timesteps


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def _nearest(name: str, choices: list[str]) -> str | None:
    folded = {c.casefold(): c for c in choices}
    found = difflib.get_close_matches(_fold(name), list(folded), n=1, cutoff=0.5)
    return folded[found[0]] if found else None


def _unknown(
    kind: str, name: str, choices: tuple[str, ...], more: tuple[str, ...] = ()
) -> UnknownSamplerError:
    near = _nearest(name, [*choices, *more])
    hint = f"did you mean `{near}`? " if near else ""
    return UnknownSamplerError(f"unknown {kind} `{name[:40]}`; {hint}valid {kind}s: {', '.join(choices)}")


def schedule_label(name: str | None) -> str:
    """The label of the schedule type ``name`` (label, A1111's internal name or alias, any case);
    None/empty: Automatic. Raises :class:`UnknownSamplerError` naming the nearest one."""
    if name is None or not name.strip():
        return AUTOMATIC
    found = _SCHEDULE_BY_FOLDED.get(_fold(name))
    if found is None:
        raise _unknown("schedule type", name, SCHEDULE_NAMES)
    return found


def split_combined(name: str, *, exact: bool = False) -> tuple[str, str | None]:
    """A1111's split of a pre-1.9 combined name: ``("DPM++ 2M SDE", "Exponential")`` for ``DPM++ 2M SDE
    Exponential``; ``(name, None)`` when no schedule type ends it. As in A1111, each schedule type in its
    order may strip its label, name or alias once from the end; case-insensitively unless ``exact``."""
    found: str | None = None
    if not exact:
        name = " ".join(name.split())
    for schedule in SCHEDULES:
        for option in (schedule.label, schedule.name, *schedule.aliases):
            tail = " " + option
            if name.endswith(tail) if exact else name.casefold().endswith(tail.casefold()):
                found = schedule.label
                name = name[: -len(tail)]
                break
    return name, found


def _sampler_parts(name: str) -> tuple[SamplerInfo, str | None]:
    """The sampler ``name`` means (a name, an alias, or a combined name) and the schedule type it names."""
    folded = _fold(name)
    combined = _OLD_ALIASES.get(folded)
    if combined is not None:
        return _sampler_parts(combined)
    if folded in _SAMPLER_BY_FOLDED:  # checked first: "DDIM" is a sampler, never "D" + schedule DDIM
        return _SAMPLER[_SAMPLER_BY_FOLDED[folded]], None
    # The longest schedule type that leaves a known sampler: "Euler SGM Uniform" is Euler with SGM Uniform
    # (A1111 strips "Uniform" first and finds no sampler "Euler SGM").
    for option, label in _SCHEDULE_SUFFIXES:
        if folded.endswith(option):
            base = folded[: -len(option)]
            if base in _SAMPLER_BY_FOLDED:
                return _SAMPLER[_SAMPLER_BY_FOLDED[base]], label
    raise _unknown("sampler", name, SAMPLER_NAMES, tuple(_OLD_ALIASES.values()))


def canonical_sampler(name: str | None) -> str:
    """The canonical spelling of the sampler ``name``: a 1.10 name, or a combined one such as ``DPM++ 2M
    Karras`` (kept combined, so its schedule type is not lost); None/empty: :data:`DEFAULT_SAMPLER`.

    Raises :class:`UnknownSamplerError` for an unknown name (naming the nearest) or a refused sampler."""
    if name is None or not name.strip():
        return DEFAULT_SAMPLER
    info, schedule = _sampler_parts(name)
    if info.refused is not None:
        raise UnknownSamplerError(f"sampler `{info.name}` is not supported: {info.refused}.")
    return info.name if schedule is None else f"{info.name} {schedule}"


def a1111_reading(sampler: str | None, schedule_type: str | None) -> tuple[str, str]:
    """Exactly what A1111 1.10 reads from an infotext's ``Sampler`` and ``Schedule type`` (its
    ``get_sampler_and_scheduler``), for the conformance tests and for recalling a pasted text: a combined
    name split (case-sensitively), a schedule type that is the sampler's own default given back as
    Automatic, and A1111's fallbacks: an unknown ``Schedule type`` (aliases included: its lookup knows only
    labels and internal names) is Automatic, an unknown sampler is its default ``DPM++ 2M``. Refused
    samplers are returned as A1111 names them."""
    label = _SCHEDULE_EXACT.get(schedule_type or "", AUTOMATIC)
    name, from_name = split_combined(sampler or DEFAULT_SAMPLER, exact=True)
    info = _SAMPLER.get(name, SAMPLERS[0])
    label = from_name or label
    if info.default_schedule == label:
        label = AUTOMATIC
    return info.name, label


def resolve(sampler: str | None, scheduler: str | None = None) -> Resolved:
    """The sampler and the schedule type that run for a request's ``sampler`` (a name, an alias or a
    combined name; None: the default) and ``scheduler`` (a schedule type; None: Automatic).

    Automatic becomes the sampler's own default (Karras, Exponential) or Uniform (the model's sigmas, what
    A1111 runs for Euler); it stays Automatic only for samplers with their own timesteps. A schedule type at
    the end of a combined name wins over ``scheduler``, as in A1111. Raises :class:`UnknownSamplerError`
    for an unknown or refused name, or a schedule type the sampler cannot take."""
    name = canonical_sampler(sampler)
    info, from_name = _sampler_parts(name)
    label = from_name or schedule_label(scheduler)
    if info.own_timesteps:
        if label != AUTOMATIC:
            raise UnknownSamplerError(
                f"`{info.name}` runs its own timesteps, so it takes no schedule type (A1111 ignores "
                f"`{label}` for it); use Automatic, or `Euler` or `DPM++ 2M` with `{label}`."
            )
        return Resolved(info.name, AUTOMATIC)
    if label == AUTOMATIC:
        label = info.default_schedule or "Uniform"
    if label not in info.schedules:
        raise UnknownSamplerError(
            f"`{info.name}` cannot run the `{label}` schedule type here (diffusers has no such option for "
            f"its scheduler); {_instead(info, label)}."
        )
    return Resolved(info.name, label)


def _instead(info: SamplerInfo, label: str) -> str:
    """The nearest working choice for a sampler that cannot take schedule type ``label``."""
    if label in _CUSTOM:
        return f"`Euler` and `Euler a` run `{label}`"
    return f"`{info.name}` runs {', '.join(sorted(info.schedules))}"
