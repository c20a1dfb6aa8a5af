"""Conformance table: A1111 1.10's sampler names, aliases, schedule types and pre-1.9 combined names, each
with what A1111's ``get_sampler_and_scheduler`` reads (learned from its code) and what the engine runs."""

from __future__ import annotations

import re

import pytest

from engine.sampler_names import (
    DEFAULT_SAMPLER,
    REFUSED_SAMPLERS,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    Resolved,
    UnknownSamplerError,
    a1111_reading,
    canonical_sampler,
    resolve,
    schedule_label,
)

A = "Automatic"

# A1111 1.10's sampler list in its order: name, aliases, and the schedule type Automatic runs there
# ("" where it runs the model's own sigmas, None where the sampler has its own timesteps).
A1111_SAMPLERS = [
    ("DPM++ 2M", ["k_dpmpp_2m"], "Karras"),
    ("DPM++ SDE", ["k_dpmpp_sde"], "Karras"),
    ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], "Exponential"),
    ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"], "Exponential"),
    ("DPM++ 2S a", ["k_dpmpp_2s_a"], "Karras"),
    ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"], "Exponential"),
    ("Euler a", ["k_euler_a", "k_euler_ancestral"], ""),
    ("Euler", ["k_euler"], ""),
    ("LMS", ["k_lms"], ""),
    ("Heun", ["k_heun"], ""),
    ("DPM2", ["k_dpm_2"], "Karras"),
    ("DPM2 a", ["k_dpm_2_a"], "Karras"),
    ("DPM fast", ["k_dpm_fast"], ""),
    ("DPM adaptive", ["k_dpm_ad"], ""),
    ("Restart", ["restart"], "Karras"),
    ("DDIM", ["ddim"], None),
    ("DDIM CFG++", ["ddim_cfgpp"], None),
    ("PLMS", ["plms"], None),
    ("UniPC", ["unipc"], None),
    ("LCM", ["k_lcm"], None),
]
# What the refusal names as the nearest sampler that runs.
REFUSED = {"DPM fast": "DPM++ 2M", "DPM adaptive": "DPM++ 2M", "Restart": "Heun", "DDIM CFG++": "DDIM"}

# A1111 1.10's schedule types: label, internal name, aliases.
A1111_SCHEDULES = [
    ("Automatic", "automatic", []),
    ("Uniform", "uniform", []),
    ("Karras", "karras", []),
    ("Exponential", "exponential", []),
    ("Polyexponential", "polyexponential", []),
    ("SGM Uniform", "sgm_uniform", ["SGMUniform"]),
    ("KL Optimal", "kl_optimal", []),
    ("Align Your Steps", "align_your_steps", []),
    ("Simple", "simple", []),
    ("Normal", "normal", []),
    ("DDIM", "ddim", []),
    ("Beta", "beta", []),
]

# (Sampler field, Schedule type field) -> what A1111 1.10 reads, and what the engine runs.
COMBINED = [
    # the names A1111 listed before 1.9
    (("LMS Karras", None), ("LMS", "Karras"), Resolved("LMS", "Karras")),
    (("DPM2 Karras", None), ("DPM2", A), Resolved("DPM2", "Karras")),
    (("DPM2 a Karras", None), ("DPM2 a", A), Resolved("DPM2 a", "Karras")),
    (("DPM++ 2S a Karras", None), ("DPM++ 2S a", A), Resolved("DPM++ 2S a", "Karras")),
    (("DPM++ 2M Karras", None), ("DPM++ 2M", A), Resolved("DPM++ 2M", "Karras")),
    (("DPM++ SDE Karras", None), ("DPM++ SDE", A), Resolved("DPM++ SDE", "Karras")),
    (("DPM++ 2M SDE Karras", None), ("DPM++ 2M SDE", "Karras"), Resolved("DPM++ 2M SDE", "Karras")),
    (("DPM++ 2M SDE Exponential", None), ("DPM++ 2M SDE", A), Resolved("DPM++ 2M SDE", "Exponential")),
    (
        ("DPM++ 2M SDE Heun Karras", None),
        ("DPM++ 2M SDE Heun", "Karras"),
        Resolved("DPM++ 2M SDE Heun", "Karras"),
    ),
    (
        ("DPM++ 2M SDE Heun Exponential", None),
        ("DPM++ 2M SDE Heun", A),
        Resolved("DPM++ 2M SDE Heun", "Exponential"),
    ),
    (("DPM++ 3M SDE Karras", None), ("DPM++ 3M SDE", "Karras"), Resolved("DPM++ 3M SDE", "Karras")),
    (("DPM++ 3M SDE Exponential", None), ("DPM++ 3M SDE", A), Resolved("DPM++ 3M SDE", "Exponential")),
    # any sampler + any schedule type's label, internal name or alias
    (("Euler Karras", None), ("Euler", "Karras"), Resolved("Euler", "Karras")),
    (("Euler karras", None), ("Euler", "Karras"), Resolved("Euler", "Karras")),
    (("Euler SGMUniform", None), ("Euler", "SGM Uniform"), Resolved("Euler", "SGM Uniform")),
    (("Euler a sgm_uniform", None), ("Euler a", "SGM Uniform"), Resolved("Euler a", "SGM Uniform")),
    (("Euler Align Your Steps", None), ("Euler", "Align Your Steps"), Resolved("Euler", "Align Your Steps")),
    (("Heun Beta", None), ("Heun", "Beta"), Resolved("Heun", "Beta")),
    # A1111 strips " Uniform" first and finds no sampler "Euler SGM" (hence its alias SGMUniform)
    (("Euler SGM Uniform", None), ("DPM++ 2M", "Uniform"), Resolved("Euler", "SGM Uniform")),
    # the name's schedule type wins over the field
    (("Euler Karras", "Exponential"), ("Euler", "Karras"), Resolved("Euler", "Karras")),
    (("DPM++ 2M Karras", "Exponential"), ("DPM++ 2M", A), Resolved("DPM++ 2M", "Karras")),
    # 1.9+ texts: the two fields
    (("DPM++ 2M", "Karras"), ("DPM++ 2M", A), Resolved("DPM++ 2M", "Karras")),
    (("DPM++ 2M", "Exponential"), ("DPM++ 2M", "Exponential"), Resolved("DPM++ 2M", "Exponential")),
    (("DPM++ 2M SDE", "Exponential"), ("DPM++ 2M SDE", A), Resolved("DPM++ 2M SDE", "Exponential")),
    (("DPM++ 2M SDE", None), ("DPM++ 2M SDE", A), Resolved("DPM++ 2M SDE", "Exponential")),
    (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform"), Resolved("Euler", "SGM Uniform")),
    (("Euler a", None), ("Euler a", A), Resolved("Euler a", "Uniform")),
    (("UniPC", None), ("UniPC", A), Resolved("UniPC", A)),
    ((None, None), ("DPM++ 2M", A), Resolved("DPM++ 2M", "Karras")),
]


def test_the_lists_are_a1111s():
    assert SAMPLER_NAMES + REFUSED_SAMPLERS == tuple(
        n for n, _, _ in A1111_SAMPLERS if n not in REFUSED
    ) + tuple(n for n, _, _ in A1111_SAMPLERS if n in REFUSED)
    assert SCHEDULE_NAMES == tuple(label for label, _, _ in A1111_SCHEDULES)
    assert DEFAULT_SAMPLER == "DPM++ 2M" == A1111_SAMPLERS[0][0]


@pytest.mark.parametrize(("name", "aliases", "automatic"), A1111_SAMPLERS)
def test_every_sampler_name_and_alias(name, aliases, automatic):
    assert a1111_reading(name, None) == (name, A)
    for spelling in (name, name.upper(), f"  {name} ", *aliases):
        if name in REFUSED:
            with pytest.raises(
                UnknownSamplerError, match=f"nearest that runs is `{re.escape(REFUSED[name])}`"
            ):
                resolve(spelling)
        else:
            runs = A if automatic is None else automatic or "Uniform"
            assert resolve(spelling) == Resolved(name, runs), spelling
            assert canonical_sampler(spelling) == name


@pytest.mark.parametrize(("label", "name", "aliases"), A1111_SCHEDULES)
def test_every_schedule_type(label, name, aliases):
    for spelling in (label, name, label.lower(), *aliases):
        assert schedule_label(spelling) == label
    # A1111 looks a Schedule type field up by label or internal name only (an alias there is Automatic)
    assert a1111_reading("Euler", label) == ("Euler", label)
    assert a1111_reading("Euler", name) == ("Euler", label)
    for alias in aliases:
        assert a1111_reading("Euler", alias) == ("Euler", A)
    runs = "Uniform" if label == A else label
    assert resolve("Euler", name) == Resolved("Euler", runs)  # Euler runs every schedule type


@pytest.mark.parametrize(("given", "a1111", "runs"), COMBINED)
def test_combined_names_and_fields(given, a1111, runs):
    assert a1111_reading(*given) == a1111
    assert resolve(*given) == runs


def test_a1111_falls_back_where_the_engine_refuses():
    assert a1111_reading("Euler z", "Karras") == ("DPM++ 2M", A)  # A1111: its default sampler
    assert a1111_reading("Euler", "Karas") == ("Euler", A)
    with pytest.raises(UnknownSamplerError, match=r"unknown sampler `Euler z`; did you mean `Euler a`\?"):
        resolve("Euler z")
    with pytest.raises(UnknownSamplerError, match=r"did you mean `Karras`\?"):
        resolve("Euler", "Karas")
    with pytest.raises(UnknownSamplerError, match=r"did you mean `DPM\+\+ 2M Karras`\?"):
        resolve("DPM++ 2M Karas")


@pytest.mark.parametrize(
    ("sampler", "schedule", "hint"),
    [
        ("DDIM", "Karras", "`Euler` or `DPM\\+\\+ 2M` with `Karras`"),  # own timesteps: A1111 ignores it
        ("UniPC", "Exponential", "use Automatic"),
        ("LCM", "Karras", "use Automatic"),
        ("LMS", "KL Optimal", "`Euler` and `Euler a` run `KL Optimal`"),
        ("DPM++ 2M", "KL Optimal", "`Euler` and `Euler a` run `KL Optimal`"),
        ("Heun", "Align Your Steps", "`Euler` and `Euler a` run `Align Your Steps`"),
        ("DPM++ 2S a", "SGM Uniform", "`DPM\\+\\+ 2S a` runs Beta, Exponential, Karras"),
    ],
)
def test_pairs_that_cannot_run_name_one_that_can(sampler, schedule, hint):
    with pytest.raises(UnknownSamplerError, match=hint):
        resolve(sampler, schedule)
