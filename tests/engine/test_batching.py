"""Batch planning across models: the loaded model's jobs go first, for a bounded number of batches."""

from __future__ import annotations

from engine.batching import MODEL_STICKY_BATCHES, plan_batch
from engine.jobs import BatchKey, Job
from engine.loading import ModelSource
from engine.protocol import GenerateRequest, JobKind


def _job(job_id: str, model: str, order: int, priority: int = 0) -> Job:
    request = GenerateRequest(job_id=job_id, prompt="p", count=4, priority=priority)
    key = BatchKey(model, JobKind.TXT2IMG, 512, 512, 20, "Euler", 7.0, None)
    return Job(request, key, ModelSource("folder", f"/m/{model}", model), order=order)


def _run_all(jobs: list[Job], loaded: str) -> list[str]:
    """Plan until done, as a worker does: the model of each batch becomes the loaded one."""
    ran = []
    while batch := plan_batch(jobs, 4, loaded):
        for job, _ in batch:
            job.running = False
        ran.append(batch[0][0].job_id)
        loaded = batch[0][0].key.model
    return ran


def test_the_loaded_models_jobs_go_first_but_a_waiting_model_gets_its_turn():
    jobs = [_job("b1", "B", 1), _job("b2", "B", 2)] + [_job(f"a{i}", "A", 10 + i) for i in range(8)]
    ran = _run_all(jobs, loaded="A")
    # B waited first, so A goes first at most MODEL_STICKY_BATCHES times; then B's jobs run together.
    assert ran[:MODEL_STICKY_BATCHES] == ["a0", "a1", "a2"]
    assert ran[MODEL_STICKY_BATCHES : MODEL_STICKY_BATCHES + 2] == ["b1", "b2"]
    assert ran[MODEL_STICKY_BATCHES + 2 :] == ["a3", "a4", "a5", "a6", "a7"]


def test_alternating_arrivals_run_grouped_by_model():
    jobs = [_job(f"{m}{i}", m.upper(), 2 * i + (m == "b")) for i in range(3) for m in "ab"]
    ran = _run_all(jobs, loaded="A")
    assert ran == ["a0", "a1", "a2", "b0", "b1", "b2"]  # one switch instead of five


def test_a_higher_priority_job_is_never_passed_over_for_the_loaded_model():
    jobs = [_job("a1", "A", 1), _job("b-urgent", "B", 2, priority=5)]
    assert _run_all(jobs, loaded="A") == ["b-urgent", "a1"]
