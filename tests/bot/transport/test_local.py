"""The local transport against real engine worker processes on the tiny model."""

from __future__ import annotations

import asyncio
import os
import signal

from bot.db import Database, Job, JobState
from bot.db.jobs import JobStore
from bot.jobs.events import JobFinished, JobProgress
from bot.jobs.manager import JobManager
from bot.transport.local import LocalTransport, WorkerOptions
from engine.protocol import GenerateRequest, JobDone, WorkerReady


async def _next(events, kind, wait=120):
    async def find():
        async for event in events:
            if isinstance(event, kind):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), wait)


async def test_worker_runs_a_request_and_reports_capacity(tiny_model):
    transport = LocalTransport(WorkerOptions(model=str(tiny_model), device="cpu", max_batch=2))
    await transport.start()
    events = transport.events()
    try:
        assert transport.free_slots() == 0  # not ready yet: nothing is dispatched to a loading worker
        ready = await _next(events, WorkerReady)
        assert ready.max_batch == 2 and transport.free_slots() == 4  # two batches' worth of images
        await transport.submit(GenerateRequest("j1", "a cat", seed=3, steps=2, width=64, height=64, count=2))
        assert transport.free_slots() == 2  # counted in images: the job holds two
        done = await _next(events, JobDone)
        assert done.job_id == "j1" and [i.seed for i in done.images] == [3, 4]
        assert all(i.png.startswith(b"\x89PNG") for i in done.images)
        assert transport.free_slots() == 4
    finally:
        await transport.close()


async def test_sigkilled_worker_is_restarted_and_its_job_completes_once(tmp_path, tiny_model):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await db.migrate()
    transport = LocalTransport(
        WorkerOptions(model=str(tiny_model), device="cpu", max_batch=1), restart_delay=0.1
    )
    manager = JobManager(JobStore(db.sessions), transport, tmp_path / "out")
    stepping: asyncio.Queue[str] = asyncio.Queue()
    finished: list[Job] = []

    async def listen(event):
        if isinstance(event, JobProgress):
            stepping.put_nowait(event.job_id)
        elif isinstance(event, JobFinished):
            finished.append(event.job)

    manager.subscribe(listen)
    await manager.start()
    try:
        job = Job(
            id="a" * 32,
            guild_id=None,
            channel_id=1,
            user_id=2,
            prompt="a fox",
            seed=1,
            steps=8,
            cfg_scale=7.0,
            sampler="Euler",
            width=64,
            height=64,
            count=1,
        )
        await manager.submit(job)
        assert await asyncio.wait_for(stepping.get(), 120) == job.id  # mid-job: it has taken a step
        (pid,) = transport.pids()
        os.kill(pid, signal.SIGKILL)
        for _ in range(600):
            if finished:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # room for a wrong second result to show up
        assert [j.id for j in finished] == [job.id]
        assert finished[0].state is JobState.DONE and finished[0].attempts == 2
        assert transport.pids() and transport.pids() != [pid]
        rows = await db.engine.connect()
        usage = (await rows.exec_driver_sql("select count(*) from usage")).scalar_one()
        await rows.close()
        assert usage == 1
    finally:
        await manager.close()
        await db.close()
