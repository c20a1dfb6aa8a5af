"""The local transport against real engine worker processes on the tiny model."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from bot.db import Database, Job, JobState
from bot.db.jobs import JobStore
from bot.jobs.events import JobFinished, JobProgress
from bot.jobs.manager import JobManager
from bot.transport.base import NoRoom
from bot.transport.local import LocalTransport, WorkerOptions
from engine.protocol import GenerateRequest, JobDone, WorkerReady
from tests.enginefork import engine_python
from tests.waiting import wait_until


async def _next(events, kind, wait=120):
    async def find():
        async for event in events:
            if isinstance(event, kind):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), wait)


async def test_worker_runs_a_request_and_reports_capacity(tiny_model):
    transport = LocalTransport(
        WorkerOptions(model=str(tiny_model), device="cpu", max_batch=2, python=engine_python())
    )
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


async def test_sigkilled_worker_is_restarted_and_its_job_completes_once(tmp_path, tiny_model, make_job):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await db.migrate()
    transport = LocalTransport(
        WorkerOptions(model=str(tiny_model), device="cpu", max_batch=1, python=engine_python()),
        restart_delay=0.1,
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
        job = make_job(user_id=2, steps=8)
        await manager.submit(job)
        assert await asyncio.wait_for(stepping.get(), 120) == job.id  # mid-job: it has taken a step
        (pid,) = transport.pids()
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: bool(finished), "the killed worker's job to finish", timeout=120)
        # A wrong second result would come from the job run twice; a job submitted now runs after any such
        # rerun on this one worker, so once it is done, a second result would have been seen.
        after = make_job(user_id=2, steps=2, prompt="after")
        await manager.submit(after)
        await wait_until(lambda: after.id in {j.id for j in finished}, "the next job to finish", timeout=120)
        assert [j.id for j in finished] == [job.id, after.id]
        assert finished[0].state is JobState.DONE and finished[0].attempts == 2
        assert transport.pids() and transport.pids() != [pid]
        rows = await db.engine.connect()
        usage = (await rows.exec_driver_sql("select job_id from usage")).scalars().all()
        await rows.close()
        assert sorted(usage) == sorted([job.id, after.id])  # the rerun job is counted once
    finally:
        await manager.close()
        await db.close()


async def test_a_worker_whose_process_ended_takes_no_job_before_its_exit_is_read(tmp_path):
    # Its output may not have been read to the end yet (the bot is busy, or the process that ended held no
    # pipe): a job sent now could only fail and count against its member. It goes back in line instead.
    transport = LocalTransport(WorkerOptions(model="unused", max_batch=2))
    (worker,) = transport._workers
    worker.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    worker.ready = True
    assert transport.free_slots() == 2 * worker.max_batch  # ready, its exit not yet known
    await worker.proc.wait()
    assert transport.free_slots() == 0
    with pytest.raises(NoRoom):
        await transport.submit(GenerateRequest("j", "a cat", steps=2, width=64, height=64))
    # Found gone while sending (its input closed, its exit not yet known): no more jobs go there either.
    worker.proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import os, signal; os.close(0); print(flush=True); signal.pause()",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert worker.proc.stdout is not None
        await worker.proc.stdout.readline()  # its input is closed now
        assert transport.free_slots() == 2 * worker.max_batch
        with pytest.raises(NoRoom):
            await transport.submit(GenerateRequest("k", "a cat", steps=2, width=64, height=64))
        assert transport.free_slots() == 0 and worker.inflight == {}
    finally:
        worker.proc.kill()
        await worker.proc.wait()
