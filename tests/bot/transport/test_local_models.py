"""Local workers: a job goes to a worker that ran its model lately (likely still in its model cache)."""

from __future__ import annotations

from bot.transport.local import _Worker, pick_worker


def _worker(name: str, *models: str | None, inflight: int = 0) -> _Worker:
    worker = _Worker(name, "cpu", ready=True, max_batch=2)
    worker.recent = dict.fromkeys(models)
    if inflight:
        worker.inflight["busy"] = inflight
    return worker


def test_a_job_goes_where_its_model_ran_lately_while_that_worker_has_room():
    a, b = _worker("a", "alpha"), _worker("b", "beta", inflight=2)
    assert pick_worker([a, b], "beta") is b  # less room, but beta is there
    assert pick_worker([a, b], "gamma") is a  # nobody has gamma: the most room
    assert pick_worker([a, b], None) is a
    assert pick_worker([a], "beta") is a  # b full (not a candidate): anyone with room
