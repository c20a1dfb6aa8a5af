"""The model cache: jobs switching between models do not reload them from disk; the least recently used
model leaves first (to RAM when its budget allows, then out); a model that does not fit leaves the others
working."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.protocol import JobDone, JobFailed
from tests.engine.conftest import request


@pytest.fixture(scope="module")
def three_models(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODELS_DIR with three diffusers folders (copies of the tiny model)."""
    models = tmp_path_factory.mktemp("three-models")
    for name in ("alpha", "beta", "gamma"):
        shutil.copytree(tiny_model, models / name)
    return models


def _runner(models: Path, **kw):
    from engine.runner import Runner

    return Runner(models / "alpha", device="cpu", models_dir=models, worker_id="cache", **kw)


def test_jobs_alternating_between_two_models_load_each_from_disk_once(three_models):
    r = _runner(three_models, cache_models=2)
    try:
        for i in range(6):
            name = ("alpha", "beta")[i % 2]
            done = r.run([request(f"alt{i}", model=name)])[f"alt{i}"]
            assert isinstance(done, JobDone) and done.model == name
        assert sorted(r.slot.disk_loads.values()) == [1, 1]
    finally:
        r.close()


def test_one_model_at_a_time_reloads_on_every_switch(three_models):
    """The same alternation with a cache of one (A1111's default): what the cache saves."""
    r = _runner(three_models, cache_models=1)
    try:
        for i in range(4):
            r.run([request(f"one{i}", model=("alpha", "beta")[i % 2])])
        counts = {key.rsplit("/", 1)[-1]: n for key, n in r.slot.disk_loads.items()}
        assert counts == {"alpha": 2, "beta": 2}
    finally:
        r.close()


def test_least_recently_used_leaves_first_through_ram(three_models):
    r = _runner(three_models, cache_models=2, cache_ram=1)
    try:
        r.run([request("b", model="beta")])
        r.run([request("a", model="alpha")])  # alpha is now the most recently used
        assert r.slot.cached() == [("beta", True), ("alpha", True)]
        r.run([request("g", model="gamma")])  # beta, the least recently used, moves to RAM
        assert r.slot.cached() == [("beta", False), ("alpha", True), ("gamma", True)]
        r.run([request("b2", model="beta")])  # back from RAM, not from disk; alpha goes to RAM
        assert r.slot.cached() == [("alpha", False), ("gamma", True), ("beta", True)]
        r.run([request("g2", model="gamma")])
        r.run([request("x", model="alpha")])  # from RAM; beta to RAM
        r.run([request("b3", model="beta")])  # from RAM; gamma to RAM
        assert r.slot.cached() == [("gamma", False), ("alpha", True), ("beta", True)]
        counts = {key.rsplit("/", 1)[-1]: n for key, n in r.slot.disk_loads.items()}
        assert counts == {"alpha": 1, "beta": 1, "gamma": 1}
        r.run([request("g3", model="gamma")])  # alpha leaves the device; RAM holds one: gamma was it
        assert r.slot.cached() == [("alpha", False), ("beta", True), ("gamma", True)]
    finally:
        r.close()


def test_a_model_that_does_not_fit_even_alone_leaves_the_others_working(three_models):
    r = _runner(three_models, cache_models=2)
    try:
        r.run([request("b", model="beta")])
        assert r.slot.cached() == [("alpha", True), ("beta", True)]
        original_place = r.slot._place
        resident = {id(r.slot.pipe), id(r.slot._cache[next(iter(r.slot._cache))].pipe)}

        def place(pipe):  # gamma never fits; the models that were there do
            if id(pipe) not in resident:
                raise RuntimeError("CUDA out of memory (simulated)")
            original_place(pipe)

        r.slot._place = place
        failed = r.run([request("g", model="gamma")])["g"]
        assert isinstance(failed, JobFailed) and "could not move model gamma" in failed.reason
        assert r.model_name == "beta"
        assert r.slot.cached() == [("alpha", True), ("beta", True)]  # both went back on the device
        del r.slot._place
        assert isinstance(r.run([request("a", model="alpha")])["a"], JobDone)
        assert sum(r.slot.disk_loads.values()) == 3  # alpha and beta once; gamma's one try
    finally:
        r.close()


def test_a_gigabyte_budget_keeps_fewer_models_on_the_device(three_models):
    from engine.model_slot import GIB, weight_bytes

    probe = _runner(three_models, cache_models=1)
    one_model = weight_bytes(probe.slot.pipe)
    probe.close()
    # Room for three by count, for one and a half by weight: a second model moves the first off.
    r = _runner(three_models, cache_models=3, cache_ram=1, cache_gb=1.5 * one_model / GIB)
    try:
        r.run([request("b", model="beta")])
        assert r.slot.cached() == [("alpha", False), ("beta", True)]
    finally:
        r.close()
