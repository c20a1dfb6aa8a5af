"""The nats transport against a real nats-server and real `python -m engine serve` workers.

Workers run the load simulation (a fixed sleep per step, small valid PNGs) so these tests measure the
plumbing in seconds; tests/engine/test_nats_worker.py runs a worker on the tiny diffusion model.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.js.client import JetStreamContext

from bot.db import Database, Job, JobState
from bot.db.jobs import JobStore
from bot.jobs.events import JobDispatched, JobFinished
from bot.jobs.manager import JobManager
from bot.transport.nats import NatsTransport
from engine.nats_heartbeat import HEADER_HEARTBEAT, HEADER_SLOTS, STATE_READY, heartbeat_message
from engine.nats_layout import HEADER_MSG_ID, HEADER_OBJECT, Layout
from engine.protocol import GenerateRequest, ImageResult, JobDone, WorkerReady, decode, encode
from engine.protocol import JobStarted as EngineJobStarted
from tests.bot.jobrows import new_job
from tests.engine.test_protocol import forged as forged_frame
from tests.waiting import wait_until

from .conftest import worker_logs

SIM = ("--simulate-seconds-per-step", "0.05", "--max-batch", "1")


def make_job(user_id: int = 1, *, steps: int = 10, priority: int = 0, prompt: str = "a fox") -> Job:
    """The one job factory (tests/bot/jobrows.py), with this file's ten simulated steps."""
    return new_job(user_id=user_id, steps=steps, priority=priority, prompt=prompt)


async def stream_empty(js: JetStreamContext, stream: str) -> bool:
    return (await js.stream_info(stream)).state.messages == 0


async def broker_until(url: str, probe: Callable[[JetStreamContext], Awaitable[bool]], what: str) -> None:
    """Wait until ``probe`` holds on the broker. It sends no event when a stream drops an acked message,
    so this asks it, and fails with ``what`` after 30 s."""
    nc = await nats.connect(url)
    try:
        await wait_until(lambda: probe(nc.jetstream()), what, timeout=30)
    finally:
        await nc.close()


class Recorder:
    """What the JobManager announces."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[Job] = []

    async def __call__(self, event: object) -> None:
        if isinstance(event, JobDispatched):
            self.started.append(event.job.id)
        elif isinstance(event, JobFinished):
            self.finished.append(event.job)


@contextlib.asynccontextmanager
async def running_manager(
    db_path: Path, transport: NatsTransport
) -> AsyncIterator[tuple[JobManager, Recorder]]:
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    await db.migrate()
    manager = JobManager(JobStore(db.sessions), transport, db_path.parent / "images")
    recorder = Recorder()
    manager.subscribe(recorder)
    await manager.start()
    try:
        yield manager, recorder
    finally:
        await manager.close()
        await db.close()


@contextlib.asynccontextmanager
async def watch_starts(url: str, namespace: str) -> AsyncIterator[list[tuple[str, str]]]:
    """(job id, worker id) of every JobStarted the workers publish, in arrival order."""
    seen: list[tuple[str, str]] = []
    nc = await nats.connect(url)

    async def on_event(msg) -> None:
        event = decode(msg.data)
        if isinstance(event, EngineJobStarted):
            seen.append((event.job_id, event.worker_id))

    await nc.subscribe(Layout(namespace).events_filter, cb=on_event)
    try:
        yield seen
    finally:
        await nc.close()


def query(db_path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db_path, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_free_slots_follow_heartbeats_and_a_draining_worker_finishes_its_job(
    nats_server, nats_namespace, spawn_worker
):
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    await transport.start()
    events = transport.events()
    worker = spawn_worker(nats_server.url, nats_namespace, "w0", *SIM, "--slots", "2")
    try:
        assert transport.free_slots() == 0  # nobody announced yet: the manager holds every job back
        ready = await asyncio.wait_for(anext(events), 30)
        assert isinstance(ready, WorkerReady) and ready.worker_id == "w0"
        assert transport.free_slots() == 2 and transport.worker_count() == 1
        await transport.submit(GenerateRequest("j1", "a cat", steps=20, width=64, height=64, seed=5))
        assert transport.free_slots() == 1
        started = await asyncio.wait_for(anext(events), 30)
        assert isinstance(started, EngineJobStarted) and started.worker_id == "w0"
        worker.kill(signal.SIGTERM)  # drain: the running job still finishes and is reported
        async for event in events:
            if isinstance(event, JobDone):
                break
        assert event.job_id == "j1" and event.worker_id == "w0"
        assert event.images[0].seed == 5 and event.images[0].png.startswith(b"\x89PNG")
        await wait_until(lambda: transport.worker_count() == 0, "the worker to leave", timeout=20)
        assert transport.free_slots() == 0
        assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    except BaseException:
        print(worker_logs([worker]))
        raise
    finally:
        await transport.close()


async def test_three_workers_one_killed_mid_job_every_job_done_once(
    nats_server, nats_namespace, spawn_worker, tmp_path
):
    workers = [spawn_worker(nats_server.url, nats_namespace, f"w{i}", *SIM) for i in range(3)]
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=2)
    layout = Layout(nats_namespace)
    db_path = tmp_path / "bot.db"
    jobs = [make_job(user_id=1 + i % 3, prompt=f"fox {i}") for i in range(12)]
    try:
        async with (
            watch_starts(nats_server.url, nats_namespace) as starts,
            running_manager(db_path, transport) as (manager, recorder),
        ):
            await wait_until(lambda: transport.worker_count() == 3, "three workers", timeout=30)
            for job in jobs:
                await manager.submit(job)
            # Kill w1 the moment it is working on something.
            await wait_until(lambda: any(w == "w1" for _, w in starts), "w1 to start a job", timeout=20)
            killed_job = next(j for j, w in starts if w == "w1")
            workers[1].kill(signal.SIGKILL)
            await wait_until(lambda: len(recorder.finished) >= len(jobs), "every job to finish", timeout=60)
            # Every job acked: no worker holds one, so any second result was published before now, and
            # the results stream hands it over before the result of a job sent after it.
            await broker_until(nats_server.url, lambda js: stream_empty(js, layout.jobs_stream), "the acks")
            last = make_job(prompt="the last one")
            await manager.submit(last)
            await wait_until(lambda: last.id in {j.id for j in recorder.finished}, "the last job", timeout=30)

            assert Counter(j.id for j in recorder.finished) == Counter(j.id for j in [*jobs, last])
            assert {j.state for j in recorder.finished} == {JobState.DONE}
            # The killed worker's job came back after its lease and ran elsewhere.
            assert any(j == killed_job and w != "w1" for j, w in starts)
    except BaseException:
        print(worker_logs(workers))
        raise
    assert query(db_path, "select count(*), count(distinct job_id) from usage") == [(13, 13)]
    assert query(db_path, "select count(*) from images") == [(13,)]


async def test_cancel_reaches_the_worker_holding_the_job(nats_server, nats_namespace, spawn_worker, tmp_path):
    worker = spawn_worker(nats_server.url, nats_namespace, "w0", *SIM)
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    try:
        async with (
            watch_starts(nats_server.url, nats_namespace) as starts,
            running_manager(tmp_path / "bot.db", transport) as (manager, recorder),
        ):
            await wait_until(lambda: transport.worker_count() == 1, "the worker", timeout=30)
            long_job = make_job(steps=150)  # 7.5 s of simulated work (150: bounds.STEPS)
            await manager.submit(long_job)
            await wait_until(lambda: bool(starts), "the job to start on the worker", timeout=10)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await manager.cancel(long_job.id)
            await wait_until(lambda: bool(recorder.finished), "the cancel", timeout=5)
            assert loop.time() - t0 < 2
            assert recorder.finished[0].state is JobState.CANCELLED
            # The worker is free again and takes the next job.
            follow_up = make_job(steps=2)
            await manager.submit(follow_up)
            await wait_until(lambda: len(recorder.finished) == 2, "the next job", timeout=10)
            assert recorder.finished[1].id == follow_up.id and recorder.finished[1].state is JobState.DONE
    except BaseException:
        print(worker_logs([worker]))
        raise


async def test_a_job_longer_than_its_lease_stays_with_its_worker(
    nats_server, nats_namespace, spawn_worker, tmp_path
):
    workers = [spawn_worker(nats_server.url, nats_namespace, f"w{i}", *SIM) for i in range(2)]
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=1)
    try:
        async with (
            watch_starts(nats_server.url, nats_namespace) as starts,
            running_manager(tmp_path / "bot.db", transport) as (manager, recorder),
        ):
            await wait_until(lambda: transport.worker_count() == 2, "two workers", timeout=30)
            job = make_job(steps=60)  # 3 s of work against a 1 s lease: kept alive by in_progress()
            await manager.submit(job)
            await wait_until(lambda: bool(recorder.finished), "the job", timeout=30)
            assert recorder.finished[0].state is JobState.DONE
            assert [job_id for job_id, _ in starts] == [job.id]  # started once: never redelivered
    except BaseException:
        print(worker_logs(workers))
        raise


async def test_priority_survives_the_transport(nats_server, nats_namespace, spawn_worker, tmp_path):
    # One worker holding one job at a time: the order jobs start in is the order the manager released them.
    worker = spawn_worker(nats_server.url, nats_namespace, "w0", *SIM, "--slots", "1")
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    try:
        async with (
            watch_starts(nats_server.url, nats_namespace) as starts,
            running_manager(tmp_path / "bot.db", transport) as (manager, recorder),
        ):
            await wait_until(lambda: transport.worker_count() == 1, "the worker", timeout=30)
            normal = [make_job(user_id=1, steps=4, prompt=f"n{i}") for i in range(5)]
            for job in normal:
                await manager.submit(job)
            urgent = make_job(user_id=2, steps=4, priority=10, prompt="urgent")
            await manager.submit(urgent)
            await wait_until(lambda: len(recorder.finished) == 6, "every job", timeout=30)
            order = [job_id for job_id, _ in starts]
            assert order.index(urgent.id) <= 1, order  # behind at most the one job already out
    except BaseException:
        print(worker_logs([worker]))
        raise


async def test_bot_killed_mid_queue_and_restarted_loses_nothing(fake_discord, tmp_path, spawn_worker):
    """The real `python -m bot` with ENGINE_TRANSPORT=nats, SIGKILLed while jobs are queued and running,
    then started again: every job is posted exactly once and counted once."""
    from tests.bot.test_restart import BotProcess, bot_env

    from .conftest import start_nats_server

    server = start_nats_server(tmp_path / "nats")  # the bot uses the default namespace: a broker of its own
    fake = fake_discord
    guild = fake.add_guild("NATS Club")
    channel = fake.add_channel(guild, "art")
    users = [fake.add_user(f"artist{i}") for i in range(3)]
    for user in users:
        fake.add_member(guild, user)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = bot_env(fake, tmp_path, tmp_path / "unused-model", guild.id)
    env.update(ENGINE_TRANSPORT="nats", NATS_URL=server.url, DEFAULT_STEPS="10")
    workers = [spawn_worker(server.url, "imagine", f"w{i}", *SIM) for i in range(2)]
    bot = BotProcess(env, workdir)
    db_path = tmp_path / "bot.db"
    total = 9
    try:
        await bot.start()
        await bot.wait_ready()
        for turn in range(total // len(users)):
            for user in users:
                inter = await fake.invoke("imagine", {"prompt": f"harbour {turn} by {user.username}"},
                                          guild=guild, channel=channel, user=user)  # fmt: skip
                await inter.wait_response()
        await fake.wait_until(lambda: len(query(db_path, "select id from jobs")) == total, timeout=30)
        await fake.wait_until(
            lambda: any(a.filename.endswith(".png") for m in fake.messages for a in m.attachments), timeout=60
        )
        await bot.kill(signal.SIGKILL)
        assert query(db_path, "select count(*) from jobs where delivered_at is null")[0][0] > 0

        await bot.start()
        await bot.wait_ready()
        await fake.wait_until(
            lambda: query(db_path, "select count(*) from jobs where delivered_at is not null")[0][0] == total,
            timeout=60,
        )
        # Nothing left to deliver twice: every job acked by its worker, every result acked by the bot. A
        # duplicate post would then come before the post of one more job.
        layout = Layout()
        await broker_until(server.url, lambda js: stream_empty(js, layout.jobs_stream), "the jobs' acks")
        await broker_until(
            server.url, lambda js: stream_empty(js, layout.results_stream), "the results' acks"
        )
        inter = await fake.invoke(
            "imagine", {"prompt": "one more"}, guild=guild, channel=channel, user=users[0]
        )
        await inter.wait_response()
        total += 1
        await fake.wait_until(
            lambda: query(db_path, "select count(*) from jobs where delivered_at is not null")[0][0] == total,
            timeout=60,
        )
    except BaseException:
        print(bot.tail())
        print(worker_logs(workers))
        raise
    finally:
        await bot.kill(signal.SIGINT)
        server.stop()

    jobs = query(db_path, "select id, state from jobs")
    assert len(jobs) == total and {state for _, state in jobs} == {"done"}
    posted = Counter(
        a.filename.rsplit(".", 1)[0] for m in fake.messages if not m.deleted
        for a in m.attachments if a.filename.endswith(".png")
    )  # fmt: skip
    assert posted == Counter({job_id: 1 for job_id, _ in jobs}), posted
    assert query(db_path, "select count(*), count(distinct job_id) from usage") == [(total, total)]


async def test_forged_heartbeats_release_no_jobs(nats_server, nats_namespace):
    layout = Layout(nats_namespace)
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    nc = await nats.connect(nats_server.url)
    pinged = asyncio.Event()

    async def on_ping(msg) -> None:
        pinged.set()

    await nc.subscribe(layout.ping_subject, cb=on_ping)
    await transport.start()
    events = transport.events()
    try:
        await asyncio.wait_for(pinged.wait(), 30)  # the transport listens to heartbeats, then pings
        forged = [
            ("greedy", {HEADER_SLOTS: "1000000000"}),  # would release the whole queue to it
            ("immortal", {HEADER_HEARTBEAT: "1e9"}),  # would stay counted long after it died
            ("w\nfake log line", {}),
        ]
        for worker_id, headers in forged:
            await nc.publish(
                layout.heartbeat_subject, encode(WorkerReady(worker_id, "m", "cpu", 1)), headers=headers
            )
        body, headers = heartbeat_message(WorkerReady("honest", "m", "cpu", 1), 2, 1.0, STATE_READY)
        await nc.publish(layout.heartbeat_subject, body, headers=headers)
        # Published after the forged ones on one connection: heard after them.
        ready = await asyncio.wait_for(anext(events), 30)
        assert isinstance(ready, WorkerReady) and ready.worker_id == "honest"
        assert transport.worker_count() == 1 and transport.free_slots() == 2
    finally:
        await nc.close()
        await transport.close()


async def test_forged_results_never_reach_the_manager(nats_server, nats_namespace):
    layout = Layout(nats_namespace)
    nc = await nats.connect(nats_server.url)
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    try:
        js = nc.jetstream()
        store = await layout.ensure(js)
        await store.put("requests/other", b"another job's request")
        png = ImageResult(0, 1, b"\x89PNG")
        image = {"$t": "ImageResult", "index": "0/../../x", "seed": 1, "png": {"$b": 0}}
        bad_index = forged_frame({"$t": "JobDone", "job_id": "j1", "images": [image]}, b"\x89PNG")
        forged = [
            (layout.results_subject("j1"), bad_index, {}),
            (layout.results_subject("j1"), encode(JobDone("j2", [png])), {}),  # another job's subject
            (layout.results_subject("j3"), b"", {HEADER_OBJECT: "requests/other"}),  # deleted once handled
        ]
        for subject, body, headers in forged:
            await js.publish(subject, body, headers={HEADER_MSG_ID: uuid.uuid4().hex, **headers})
        await js.publish(
            layout.results_subject("j4"), encode(JobDone("j4", [png])), headers={HEADER_MSG_ID: "j4"}
        )
        await transport.start()
        events = transport.events()
        # The results stream is read in order: the forged ones came first and were dropped.
        first = await asyncio.wait_for(anext(events), 30)
        assert first == JobDone("j4", [png])
        handled = asyncio.ensure_future(anext(events, None))  # j4 handled: acked
        assert (await store.get("requests/other")).data == b"another job's request"
    finally:
        await transport.close()
        await nc.close()
    assert await asyncio.wait_for(handled, 5) is None


async def test_a_job_resubmitted_after_its_result_came_in_holds_no_slots(nats_server, nats_namespace):
    """After a restart the JobManager re-queues a job that was running; its result, still in the stream,
    can be read before the job is dispatched again. The publish is then de-duplicated and no second result
    comes: the job must not keep its slots taken for ever."""
    layout = Layout(nats_namespace)
    nc = await nats.connect(nats_server.url)
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    try:
        js = nc.jetstream()
        await layout.ensure(js)
        png = ImageResult(0, 1, b"\x89PNG")
        await js.publish(
            layout.results_subject("x1"), encode(JobDone("x1", [png])), headers={HEADER_MSG_ID: "x1"}
        )
        await transport.start()
        events = transport.events()
        assert await asyncio.wait_for(anext(events), 30) == JobDone("x1", [png])  # read, not yet handled
        body, headers = heartbeat_message(WorkerReady("w", "m", "cpu", 1), 2, 1.0, STATE_READY)
        await nc.publish(layout.heartbeat_subject, body, headers=headers)
        assert isinstance(await asyncio.wait_for(anext(events), 30), WorkerReady)
        await transport.submit(GenerateRequest("x1", "again", steps=2, width=64, height=64, count=2))
        assert transport.free_slots() == 2
    finally:
        await transport.close()
        await nc.close()


def test_layout_rejects_unsafe_namespaces():
    with pytest.raises(ValueError):
        Layout("a.b")
    with pytest.raises(ValueError):
        Layout("")
    assert Layout("imagine").results_subject("ab.c*") == "imagine.results.ab_c_"


def test_scaleout_benchmark_runs(nats_server, tmp_path, capsys):
    # Benchmarks measure, tests do not assert timings: this only keeps bench/scaleout.py working.
    import json

    from bench.scaleout import main

    out = tmp_path / "scaleout.json"
    args = ["--workers", "1,2", "--jobs-per-worker", "2", "--steps", "2", "--nats", nats_server.url]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [run["workers"] for run in report["runs"]] == [1, 2]
    assert [run["jobs"] for run in report["runs"]] == [2, 4]
    assert "| workers |" in capsys.readouterr().out
