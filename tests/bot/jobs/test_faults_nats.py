"""Faults with the real NATS transport, a real nats-server and a real `python -m engine serve` worker (its
load simulation): a result that arrives while the database is locked stays in the results stream,
unacknowledged, until the JobManager has recorded it."""

from __future__ import annotations

import logging

import nats

from bot.db import JobState
from bot.transport.nats import NatsTransport
from engine.nats_layout import Layout
from tests.bot.jobs.test_faults import ManagerLog, state, write_lock
from tests.bot.transport.conftest import nats_namespace, nats_server, spawn_worker, worker_logs  # noqa: F401
from tests.bot.transport.test_nats import SIM, make_job, running_manager
from tests.waiting import wait_until


async def results_held(url: str, namespace: str, expected: int) -> bool:
    """Whether the broker still keeps ``expected`` results for the bot (delivered or not): acked ones go."""
    layout = Layout(namespace)
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(layout.results_stream)
        return info.state.messages == expected
    finally:
        await nc.close()


async def test_a_result_stays_unacked_while_the_database_is_locked(
    nats_server,  # noqa: F811
    nats_namespace,  # noqa: F811
    spawn_worker,  # noqa: F811
    tmp_path,
):
    worker = spawn_worker(nats_server.url, nats_namespace, "w0", *SIM, "--slots", "1")
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    watcher = ManagerLog()
    logger = logging.getLogger("bot.jobs.manager")
    logger.addHandler(watcher)
    db_path = tmp_path / "bot.db"
    try:
        async with running_manager(db_path, transport) as (manager, recorder):
            await wait_until(lambda: transport.worker_count() == 1, "the worker")
            job = make_job(steps=40)  # 2 s of simulated work: the lock below is taken long before its end
            await manager.submit(job)
            assert job.id in recorder.started  # on its way to the worker, its row already `running`
            with write_lock(db_path) as con:
                await watcher.wait_for(f"recording the result of job {job.id}")
                # The broker keeps the result: the manager has not asked past it, so it is not acked.
                assert await results_held(nats_server.url, nats_namespace, expected=1)
                assert state(con, job.id) == "running"
            await wait_until(lambda: bool(recorder.finished), "the result to be recorded")
            assert recorder.finished[0].id == job.id and recorder.finished[0].state is JobState.DONE
            await wait_until(
                lambda: results_held(nats_server.url, nats_namespace, expected=0), "the result to be acked"
            )
    except BaseException:
        print(worker_logs([worker]))
        raise
    finally:
        logger.removeHandler(watcher)
