"""Faults under the real JobManager and the real SQLite database (its migrations, its busy timeout):
a database locked by another process past the busy timeout, and a disk that is full. No job is lost,
none is stuck, and the manager goes on serving the others."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from bot.db import Database, Job, JobState
from bot.db.jobs import JobStore
from bot.jobs.events import JobFinished, ManagerEvent
from bot.jobs.manager import JobManager
from bot.transport.base import NoRoom
from engine.protocol import JobFailed, JobProgress, WorkerReady
from tests.bot.jobs.scripted import ScriptedTransport
from tests.bot.jobs.test_fair_dispatch import job

WAIT = 60  # seconds; a locked write takes the busy timeout (5 s) to fail, and a retry may follow


class ManagerLog(logging.Handler):
    """The manager's warnings, with a way to wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    async def wait_for(self, text: str) -> str:
        async with asyncio.timeout(WAIT):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()


@dataclass
class World:
    manager: JobManager
    transport: ScriptedTransport
    db_path: Path
    images: Path
    log: ManagerLog
    finished: dict[str, Job]
    _news: asyncio.Event

    async def until(self, what: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not what():
                self._news.clear()
                await self._news.wait()

    async def finished_job(self, job_id: str) -> Job:
        await self.until(lambda: job_id in self.finished)
        return self.finished[job_id]

    async def dispatched(self, job_id: str) -> None:
        await self.until(lambda: job_id in self.transport.inflight)


@contextlib.asynccontextmanager
async def world(tmp_path: Path, slots: int) -> AsyncIterator[World]:
    db_path = tmp_path / "bot.db"
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    await db.migrate()
    transport = ScriptedTransport(slots=slots)
    manager = JobManager(JobStore(db.sessions), transport, tmp_path / "images")
    news = asyncio.Event()
    finished: dict[str, Job] = {}

    async def listener(event: ManagerEvent) -> None:
        if isinstance(event, JobFinished):
            finished[event.job.id] = event.job
        news.set()

    manager.subscribe(listener)
    # A job reaching the engine is news too: wrap the transport's submit to say so.
    submit = transport.submit

    async def submit_and_tell(request):  # type: ignore[no-untyped-def]
        await submit(request)
        news.set()

    transport.submit = submit_and_tell  # type: ignore[method-assign]
    watcher = ManagerLog()
    logger = logging.getLogger("bot.jobs.manager")
    logger.addHandler(watcher)
    await manager.start()
    try:
        yield World(manager, transport, db_path, tmp_path / "images", watcher, finished, news)
    finally:
        logger.removeHandler(watcher)
        await manager.close()
        await db.close()


@contextlib.contextmanager
def write_lock(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction (a backup tool, say): the bot's writes wait out their busy
    timeout and fail with "database is locked" while it is held. Reads still work (WAL)."""
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        yield con
        con.execute("ROLLBACK")
    finally:
        con.close()


def state(con: sqlite3.Connection, job_id: str) -> str:
    return con.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


async def test_a_locked_database_while_dispatching_loses_no_job_and_the_pump_goes_on(tmp_path):
    async with world(tmp_path, slots=1) as w:
        running = await w.manager.submit(job(1))
        await w.dispatched(running.job.id)
        waiting = await w.manager.submit(job(2))
        assert w.manager.position(waiting.job.id) == 1
        with write_lock(w.db_path) as con:
            w.transport.open(2)
            # The worker's next event: the pump handles it, then tries to start the waiting job.
            w.transport.emit(JobProgress(running.job.id, 1, 2))
            await w.log.wait_for("could not start the next job")
            # The job is still first in line, in memory as in the database, and not on a worker.
            assert w.manager.position(waiting.job.id) == 1
            assert state(con, waiting.job.id) == "queued"
            assert waiting.job.id not in w.transport.inflight
        # The lock is gone: the retry starts the job without any new event.
        await w.dispatched(waiting.job.id)
        # The pump still reads results.
        w.transport.finish(running.job.id)
        w.transport.finish(waiting.job.id)
        assert (await w.finished_job(running.job.id)).state is JobState.DONE
        assert (await w.finished_job(waiting.job.id)).state is JobState.DONE
        assert w.manager.active_jobs() == []


async def test_a_locked_database_when_a_result_arrives_holds_the_result_until_it_is_saved(tmp_path):
    async with world(tmp_path, slots=1) as w:
        first = await w.manager.submit(job(1))
        await w.dispatched(first.job.id)
        with write_lock(w.db_path) as con:
            w.transport.finish(first.job.id)
            await w.log.wait_for(f"recording the result of job {first.job.id}")
            # Not recorded yet, so not acknowledged (NATS would keep it), and the job is still running.
            assert first.job.id not in w.transport.acked
            assert state(con, first.job.id) == "running"
        done = await w.finished_job(first.job.id)
        assert done.state is JobState.DONE and len(done.images) == 1
        assert await asyncio.to_thread(Path(done.images[0].path).is_file)
        assert w.transport.acked == [first.job.id]
        # Later work still flows: the pump survived.
        second = await w.manager.submit(job(2))
        await w.dispatched(second.job.id)
        w.transport.finish(second.job.id)
        assert (await w.finished_job(second.job.id)).state is JobState.DONE


async def test_a_cancel_the_locked_database_refuses_leaves_the_job_queued(tmp_path):
    async with world(tmp_path, slots=0) as w:
        queued = await w.manager.submit(job(1))
        with write_lock(w.db_path) as con:
            with pytest.raises(OperationalError):  # the member is told it did not work
                await w.manager.cancel(queued.job.id)
            # Not cancelled in the database, so not dropped from the line either.
            assert state(con, queued.job.id) == "queued"
            assert w.manager.position(queued.job.id) == 1
        w.transport.open(1)
        await w.manager._dispatch()  # a slot opened: nudge the manager as a worker's next event would
        await w.dispatched(queued.job.id)
        w.transport.finish(queued.job.id)
        assert (await w.finished_job(queued.job.id)).state is JobState.DONE


def fill_the_disk_at(images: Path, name: str) -> list[Path]:
    """Make the write of ``name`` in the day's folder hit a full disk: the path is a link to /dev/full,
    where every write fails with ENOSPC. Today's and tomorrow's folders both (midnight may pass)."""
    now = dt.datetime.now(dt.UTC)
    links = []
    for day in (now, now + dt.timedelta(days=1)):
        folder = images / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / name
        link.symlink_to("/dev/full")
        links.append(link)
    return links


async def test_a_full_disk_fails_the_job_with_a_clear_notice_and_leaves_nothing_behind(tmp_path):
    async with world(tmp_path, slots=1) as w:
        doomed = job(1)
        doomed.count = 2
        links = fill_the_disk_at(w.images, f"{doomed.id}_1.tmp")  # the first picture fits, the second not
        await w.manager.submit(doomed)
        await w.dispatched(doomed.id)
        w.transport.finish(doomed.id)
        failed = await w.finished_job(doomed.id)
        assert failed.state is JobState.FAILED
        assert failed.error is not None and "disk is full" in failed.error
        assert str(tmp_path) not in failed.error and "/" not in failed.error  # no paths for members
        # Nothing half-written stays: not the first picture, not the partial second one.
        leftovers = [p for p in w.images.rglob("*") if p.is_file() or p.is_symlink()]
        assert [p for p in leftovers if doomed.id in p.name and p not in links] == []
        assert sum(link.is_symlink() for link in links) == 1  # the one written to was removed too
        # Its slot is released: nothing of it is queued or running, and the failure was recorded first.
        assert w.manager.active_jobs() == [] and w.manager.queued_count(1) == 0
        assert w.transport.acked == [doomed.id]
        # The next member's job is served as usual.
        other = await w.manager.submit(job(2))
        await w.dispatched(other.job.id)
        w.transport.finish(other.job.id)
        assert (await w.finished_job(other.job.id)).state is JobState.DONE


async def test_a_full_disk_through_discord_tells_the_member_and_serves_the_next(fake_discord, tmp_path):
    """The real bot on the loopback Discord: Alice's pictures hit a full disk, Bob's do not."""
    from tests.bot.jobs.scripted import scripted_bot, scripted_settings

    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    fake.add_member(guild, alice)
    fake.add_member(guild, bob)
    transport = ScriptedTransport(slots=2)
    settings = scripted_settings(fake, tmp_path, GUILD_IDS=guild.id)
    async with scripted_bot(fake, settings, transport):
        doomed = await fake.invoke("imagine", {"prompt": "a tower", "count": 2}, guild=guild, channel=channel,
                                   user=alice)  # fmt: skip
        await fake.wait_until(lambda: len(transport.inflight) == 1, timeout=30)
        job_id = next(iter(transport.inflight))
        links = fill_the_disk_at(tmp_path / "images", f"{job_id}_1.tmp")
        transport.finish(job_id)
        notice = await fake.wait_for_message(
            lambda m: m.interaction_id == doomed.id and "failed" in m.content, timeout=60
        )
        assert "the server's disk is full" in notice.content and str(tmp_path) not in notice.content
        assert not notice.attachments
        # Bob is served as usual, with the disk that has room again.
        fine = await fake.invoke("imagine", {"prompt": "a kite"}, guild=guild, channel=channel, user=bob)
        await fake.wait_until(lambda: len(transport.inflight) == 1, timeout=30)
        transport.finish(next(iter(transport.inflight)))
        await fake.wait_for_message(
            lambda m: m.interaction_id == fine.id and bool(m.attachments) and "seed" in m.content, timeout=60
        )
    left = [p.name for p in (tmp_path / "images").rglob(f"{job_id}*") if p not in links]
    assert left == []


async def test_a_worker_lost_while_its_job_was_being_started_puts_the_job_back_uncounted(tmp_path):
    # The local transport's worker died between the manager's room check and its send (the manager
    # awaited the database in between; seen in CI): the job must neither fail the member's /imagine nor
    # stay "running" with no worker, and the lost send is not one of its two attempts.
    async with world(tmp_path, slots=1) as w:
        real_submit = w.transport.submit
        lost: list[str] = []

        async def worker_gone(request):  # type: ignore[no-untyped-def]
            if not lost:
                lost.append(request.job_id)
                w.transport.open(0)  # its only worker stopped
                raise NoRoom("no engine worker has a free slot")
            await real_submit(request)

        w.transport.submit = worker_gone  # type: ignore[method-assign]
        ticket = await w.manager.submit(job(1))
        assert lost == [ticket.job.id]
        with sqlite3.connect(w.db_path) as con:
            assert con.execute(
                "SELECT state, attempts, started_at FROM jobs WHERE id = ?", (ticket.job.id,)
            ).fetchone() == ("queued", 0, None)
        assert w.manager.position(ticket.job.id) == 1
        # The worker is back: its ready message is the event after which the manager dispatches.
        w.transport.open(1)
        w.transport.emit(WorkerReady("local-0", "scripted", "cpu", 1))
        await w.dispatched(ticket.job.id)
        assert w.manager.active_jobs()[0].attempts == 1
        w.transport.finish(ticket.job.id)
        assert (await w.finished_job(ticket.job.id)).state is JobState.DONE


async def test_a_job_cancelled_while_it_was_being_put_back_is_cancelled_not_run(tmp_path):
    async with world(tmp_path, slots=1) as w:

        async def worker_gone(request):  # type: ignore[no-untyped-def]
            w.transport.open(0)
            assert await w.manager.cancel(request.job_id)  # the member presses Cancel in that moment
            raise NoRoom("no engine worker has a free slot")

        w.transport.submit = worker_gone  # type: ignore[method-assign]
        job_id = (await w.manager.submit(job(1))).job.id
        assert (await w.finished_job(job_id)).state is JobState.CANCELLED
        assert w.manager.position(job_id) is None and w.manager.active_jobs() == []


async def test_a_cancelled_job_whose_worker_dies_is_not_run_again(tmp_path):
    async with world(tmp_path, slots=1) as w:
        ticket = await w.manager.submit(job(1))
        await w.dispatched(ticket.job.id)

        async def cancel_lost(job_id: str) -> None:  # the worker dies before it hears the cancel
            w.transport.inflight.pop(job_id, None)

        w.transport.cancel = cancel_lost  # type: ignore[method-assign]
        assert await w.manager.cancel(ticket.job.id)
        w.transport.emit(JobFailed(ticket.job.id, "the engine worker stopped (exit code -9)", retryable=True))
        assert (await w.finished_job(ticket.job.id)).state is JobState.CANCELLED
        assert len(w.transport.submitted) == 1  # sent once, never again
