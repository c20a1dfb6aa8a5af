"""Jobs go only to NATS workers that have their model: workers announce the models of their MODELS_DIR in
their heartbeats and pull from those models' queues; a job for a model nobody has waits in the bot without
holding up the others. Real nats-server, real `python -m engine serve` workers (the load simulation)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from bot.db import JobState
from bot.transport.nats import NatsTransport
from bot.transport.nats_roster import WorkerRoster
from engine.nats_heartbeat import HEADER_MODELS, MAX_MODELS, STATE_READY, heartbeat_message, read_heartbeat
from engine.protocol import ProtocolError, WorkerReady
from tests.bot.jobrows import new_job
from tests.waiting import wait_until

from .conftest import worker_logs
from .test_nats import SIM, running_manager, watch_starts


async def test_jobs_run_only_on_workers_that_have_their_model(
    nats_server, nats_namespace, spawn_worker, tmp_path
):
    folders = {}
    for worker_id, model in (("wa", "alpha"), ("wb", "beta"), ("wc", "gamma")):
        folders[worker_id] = tmp_path / worker_id
        folders[worker_id].mkdir()
        (folders[worker_id] / f"{model}.safetensors").write_bytes(b"")  # listed by name; never loaded
    workers = [
        spawn_worker(nats_server.url, nats_namespace, w, *SIM, "--models-dir", str(folders[w]))
        for w in ("wa", "wb")
    ]
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    try:
        async with (
            watch_starts(nats_server.url, nats_namespace) as starts,
            running_manager(tmp_path / "bot.db", transport) as (manager, recorder),
        ):
            await wait_until(lambda: transport.worker_count() == 2, "the workers", timeout=30)
            waiting = new_job(user_id=9, steps=2, model="gamma")  # first in line; nobody has gamma yet
            await manager.submit(waiting)
            jobs = [
                new_job(user_id=i % 3, steps=2, model=m) for i, m in enumerate(["alpha", "beta", None] * 3)
            ]
            for job in jobs:
                await manager.submit(job)
            await wait_until(
                lambda: len(recorder.finished) == len(jobs), "the jobs with a worker", timeout=60
            )
            assert all(job.state is JobState.DONE for job in recorder.finished)
            ran_on = defaultdict(set)
            where = dict(starts)
            for job in jobs:
                ran_on[job.model].add(where[job.id])
            assert ran_on["alpha"] == {"wa"} and ran_on["beta"] == {"wb"}
            assert waiting.id not in where and manager.position(waiting.id) == 1  # still in the bot's queue

            workers.append(
                spawn_worker(nats_server.url, nats_namespace, "wc", *SIM, "--models-dir", str(folders["wc"]))
            )
            await wait_until(lambda: len(recorder.finished) == len(jobs) + 1, "the gamma job", timeout=60)
            assert dict(starts)[waiting.id] == "wc"
    except BaseException:
        print(worker_logs(workers))
        raise


def test_a_heartbeats_model_list_is_bounded_and_checked():
    body, headers = heartbeat_message(WorkerReady("w1", "base", "cpu", 1, 2), 4, 1.0, STATE_READY, ["alpha"])
    roster = WorkerRoster()
    roster.heard(read_heartbeat(body, headers))
    assert (roster.slots(), roster.slots("alpha"), roster.slots("beta")) == (4, 4, 0)
    for bad in (
        "not json",
        json.dumps({"alpha": 1}),
        json.dumps([1]),
        json.dumps([""]),
        json.dumps(["a\nb"]),
        json.dumps(["x" * 201]),
        json.dumps([f"m{i}" for i in range(MAX_MODELS + 1)]),
    ):
        with pytest.raises(ProtocolError):
            read_heartbeat(body, {**headers, HEADER_MODELS: bad})
