"""The JobManager: persist → fair queue → dispatch to engine workers → events back to the bot.

Every state change is written to the database before it is acted on, so a bot killed at any point
finds its work again on start (:meth:`JobManager.start` re-queues what was queued or running, and
re-announces results that were finished but never delivered).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from bot.db.jobs import JobStore
from bot.db.models import Job, JobState
from bot.jobs.engine_request import request_of
from bot.jobs.events import JobDispatched, JobFinished, JobQueued, ManagerEvent
from bot.jobs.fairness import FairQueue, QueuedJob
from bot.jobs.files import OutputFiles, shown_picture, write_failure
from bot.jobs.speed import SpeedMeter
from bot.transport.base import NoRoom, Transport
from engine import protocol

log = logging.getLogger(__name__)

Listener = Callable[[ManagerEvent], Awaitable[None]]

MAX_ATTEMPTS = 2  # a job whose worker dies twice fails with a reason instead of looping
# A database that refuses a write (locked past its busy timeout by a backup tool, its disk full) is waited
# out: the same write is tried again after 0.1 s, doubling up to 10 s, for as long as it takes.
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.1, 10.0
UNRECORDABLE = "the bot could not record its result; an admin has been told in the log"

T = TypeVar("T")


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Ticket:
    job: Job
    position: int
    eta_seconds: float | None


class JobManager:
    def __init__(
        self, store: JobStore, transport: Transport, output_dir: Path, *, preview_every: int = 0
    ) -> None:
        self.store = store
        self.transport = transport
        self.output_dir = output_dir
        self.files = OutputFiles(output_dir)
        self.preview_every = preview_every
        self.queue = FairQueue()
        self.speed = SpeedMeter()
        self._jobs: dict[str, Job] = {}  # queued or running jobs, the rows as last written
        self._running: set[str] = set()
        self._cancel_asked: set[str] = set()  # running jobs cancelled: never run again once off a worker
        self._listeners: list[Listener] = []
        self._pump: asyncio.Task[None] | None = None
        self._dispatch_lock = asyncio.Lock()
        self._dispatch_retry: asyncio.Task[None] | None = None  # a dispatch waiting out a database error
        self._dispatch_delay = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------------------------ lifecycle

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start the transport, pick up unfinished work, and re-announce undelivered results."""
        for job in await self.store.unfinished():
            if job.state is JobState.RUNNING:
                # It was on a worker when the bot stopped; that worker is gone with the old process.
                await self.store.transition(job.id, [JobState.RUNNING], JobState.QUEUED)
                job.state = JobState.QUEUED
            self._enqueue(job)
        if self._jobs:
            log.info("re-queued %d unfinished job(s) from the last run", len(self._jobs))
        await self.transport.start()
        self._pump = asyncio.create_task(self._pump_events(), name="job-events")
        for job in await self.store.undelivered():
            await self._emit(JobFinished(job))
        await self._dispatch()

    async def close(self) -> None:
        self._closed = True
        await self.transport.close()
        tasks = [t for t in (self._pump, self._dispatch_retry, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not ``await task`` under suppress(CancelledError): that would also swallow the
            # cancellation of close() itself, and a close cancelled at shutdown must stop, not go on waiting.
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("job manager task %s failed", task.get_name(), exc_info=task.exception())

    # -------------------------------------------------------------------------------------- intake

    async def submit(
        self, job: Job, *, guild_name: str = "", user_name: str = "", init_image: bytes | None = None
    ) -> Ticket:
        """Record the job, then queue it. ``job`` is a new row; its id is set here when empty."""
        if not job.id:
            job.id = new_job_id()
        job.state = JobState.QUEUED
        job.attempts = 0
        if init_image is not None:
            job.init_image_path = str(await asyncio.to_thread(self.files.save_input, job.id, init_image))
        try:
            await self.store.create(job, guild_name=guild_name, user_name=user_name)
        except BaseException:
            if job.init_image_path:
                await asyncio.to_thread(self.files.discard_input, job.init_image_path)
            raise
        self._enqueue(job)
        position = self.queue.position(job.id) or 0
        ticket = Ticket(job, position, self.estimate_wait(job.id))
        await self._dispatch()
        return ticket

    def _enqueue(self, job: Job) -> None:
        self._jobs[job.id] = job
        self.queue.push(QueuedJob(job.id, job.user_id, job.priority, job.count, job.guild_id, job.model))

    def estimate_wait(self, job_id: str) -> float | None:
        """Seconds until ``job_id`` finishes: the work ahead of it, its own, and what is running."""
        ahead: list[Job] = [self._jobs[j] for j in self._running if j in self._jobs]
        for queued in self.queue.order():
            ahead.append(self._jobs[queued.job_id])
            if queued.job_id == job_id:
                break
        return self.speed.estimate(ahead, self.transport.worker_count() or 1)

    def position(self, job_id: str) -> int | None:
        return self.queue.position(job_id)

    def queued_count(self, user_id: int | None = None) -> int:
        if user_id is None:
            return len(self.queue)
        return self.queue.count_for(user_id) + sum(
            1 for j in self._running if j in self._jobs and self._jobs[j].user_id == user_id
        )

    def active_jobs(self) -> list[Job]:
        """Running jobs, then queued ones in the order they will run."""
        running = [self._jobs[j] for j in self._running if j in self._jobs]
        return running + [self._jobs[q.job_id] for q in self.queue.order()]

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it already finished."""
        # The row first: if the database refuses, the job stays queued in memory as in the database. A
        # dispatch may start the job meanwhile: then it is cancelled on its worker below.
        if job_id in self.queue and await self.store.transition(
            job_id, [JobState.QUEUED], JobState.CANCELLED, error="cancelled"
        ):
            self.queue.remove(job_id)
            await self._finished(job_id)
            return True
        if job_id in self._running:
            self._cancel_asked.add(job_id)
            await self.transport.cancel(job_id)
            return True
        return False

    async def mark_delivered(self, job_id: str, message_id: int | None) -> None:
        # The message is on Discord already: a write the database refuses is waited out, not counted as a
        # failed delivery, which a later try would post a second time (it cannot always find the first).
        await self._db(
            f"recording that job {job_id} was delivered",
            lambda: self.store.mark_delivered(job_id, message_id),
        )

    # ------------------------------------------------------------------------------------ dispatch

    async def _dispatch(self) -> None:
        """Start queued jobs while workers have room. A database error leaves the job first in line and
        schedules another pass after a backoff: it never reaches the caller (the pump, a /imagine)."""
        async with self._dispatch_lock:
            try:
                await self._dispatch_ready()
            except OperationalError as exc:
                self._dispatch_later(exc)
            else:
                self._dispatch_delay = 0.0

    async def _dispatch_ready(self) -> None:
        # Peek, write, then take: a job leaves the queue only once its row says it is running.
        while (
            not self._closed
            and self.transport.free_slots() > 0
            and (queued := self.queue.first(lambda q: self.transport.accepts(q.model))) is not None
        ):
            job = self._jobs[queued.job_id]
            try:
                request = await request_of(job, self.preview_every)
            except OSError as exc:
                self.queue.take(job.id)
                reason = f"its input image could not be read ({exc.strerror})"
                self._spawn(self._fail(job.id, reason), f"fail-{job.id}")  # waits out the database itself
                continue
            attempt = await self.store.start_attempt(job.id)
            self.queue.take(job.id)
            if attempt is None:  # cancelled or finished meanwhile
                self._jobs.pop(job.id, None)
                continue
            job.state, job.attempts = JobState.RUNNING, attempt
            self._running.add(job.id)
            try:
                await self.transport.submit(request)
            except NoRoom:
                # A worker stopped while the row was written: the job goes back in line, and the next
                # pass comes with the event that frees room (a worker ready again).
                await self._put_back(job)
                return
            await self._emit(JobDispatched(job))

    async def _put_back(self, job: Job) -> None:
        # Still "running" while its row is written back: a cancel meanwhile is asked of it, and honoured here.
        undone = await self._db(f"re-queueing job {job.id}", lambda: self.store.undo_attempt(job.id))
        self._running.discard(job.id)
        if not undone:
            self._forget(job.id)
        elif job.id in self._cancel_asked:
            await self._fail(job.id, "cancelled", JobState.CANCELLED)
        else:
            job.state, job.attempts = JobState.QUEUED, job.attempts - 1
            self._enqueue(job)

    def _dispatch_later(self, exc: OperationalError) -> None:
        self._dispatch_delay = min(RETRY_MAX_SECONDS, self._dispatch_delay * 2 or RETRY_FIRST_SECONDS)
        log.warning(
            "could not start the next job: the database refused a write (%s); trying again in %.1f s",
            exc.orig,
            self._dispatch_delay,
        )
        retry = self._dispatch_retry
        if retry is None or retry.done() or retry is asyncio.current_task():
            self._dispatch_retry = asyncio.create_task(
                self._dispatch_after(self._dispatch_delay), name="job-dispatch-retry"
            )

    async def _dispatch_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._dispatch()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _db(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, tried again with a backoff while the database refuses it (locked, disk full)."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                return await op()
            except OperationalError as exc:
                if self._closed:
                    raise
                log.warning("%s: the database refused (%s); trying again in %.1f s", what, exc.orig, delay)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_SECONDS, delay * 2)

    # -------------------------------------------------------------------------------------- events

    async def _pump_events(self) -> None:
        # The transport is asked for the next event only once this one is recorded (NATS acknowledges a
        # result when asked for the next): database errors are waited out inside the handlers.
        async for event in self.transport.events():
            if self._closed:
                return
            try:
                await self._on_engine_event(event)
            except Exception:
                log.exception("handling engine event %s failed", type(event).__name__)
                if isinstance(event, protocol.JobDone | protocol.JobFailed):
                    try:
                        await self._fail(event.job_id, UNRECORDABLE)  # not left running forever
                    except Exception:
                        log.exception("recording that job %s failed did not work either", event.job_id)
            try:
                await self._dispatch()
            except Exception:  # the pump must outlive anything one dispatch meets
                log.exception("dispatching after %s failed", type(event).__name__)

    async def _on_engine_event(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.JobProgress):
            if event.job_id in self._running:
                await self._emit(event)
        elif isinstance(event, protocol.JobDone):
            await self._done(event)
        elif isinstance(event, protocol.JobFailed):
            await self._failed(event)
        elif isinstance(event, protocol.JobCancelled):
            if await self._db(
                f"recording that job {event.job_id} was cancelled",
                lambda: self.store.transition(
                    event.job_id, [JobState.RUNNING, JobState.QUEUED], JobState.CANCELLED, error="cancelled"
                ),
            ):
                await self._finished(event.job_id)

    async def _done(self, event: protocol.JobDone) -> None:
        job = self._jobs.get(event.job_id) or await self._db(
            f"reading job {event.job_id}", lambda: self.store.get(event.job_id)
        )
        if job is None:
            log.warning("result for unknown job %s dropped", event.job_id)
            return
        if job.id not in self._jobs and job.state.finished:
            # A result delivered again (NATS after a restart): its files are already saved, or the job
            # already failed; writing them again could only hurt.
            log.info("job %s finished twice; the second result is ignored", job.id)
            return
        # Files first, then the row: a crash between the two leaves the job running, so it is re-run
        # rather than recorded with missing files.
        try:
            saved = await asyncio.to_thread(
                self.files.save_images, job.id, (job.width, job.height), event.images
            )
        except OSError as exc:
            log.error("could not save the pictures of job %s under %s: %s", job.id, self.output_dir, exc)
            await self._fail(job.id, write_failure(exc))
            return
        finished = await self._db(
            f"recording the result of job {job.id}",
            lambda: self.store.finish(job.id, saved, event.engine_seconds, event.model),
        )
        self._forget(job.id)
        if finished is None:
            log.info("job %s finished twice; the second result is ignored", job.id)
            return
        self.speed.record(job, event.engine_seconds)
        await self._emit(JobFinished(finished, shown_picture(event, saved)))  # as recorded: no reload

    async def _failed(self, event: protocol.JobFailed) -> None:
        job = self._jobs.get(event.job_id)
        if event.retryable and event.job_id in self._cancel_asked:  # its member cancelled it: not run again
            await self._fail(event.job_id, "cancelled", JobState.CANCELLED)
            return
        if event.retryable and job is not None and job.attempts < MAX_ATTEMPTS:
            if await self._db(
                f"re-queueing job {job.id}",
                lambda: self.store.transition(job.id, [JobState.RUNNING], JobState.QUEUED),
            ):
                log.warning("job %s lost its worker (%s); running it again", job.id, event.reason)
                self._running.discard(job.id)
                job.state = JobState.QUEUED
                self._enqueue(job)
            return
        reason = event.reason
        if event.retryable:
            reason = f"{event.reason}, twice; this request seems to crash the engine"
        await self._fail(event.job_id, reason)

    async def _fail(self, job_id: str, reason: str, state: JobState = JobState.FAILED) -> None:
        if await self._db(
            f"recording that job {job_id} ended ({state.value})",
            lambda: self.store.transition(
                job_id, [JobState.RUNNING, JobState.QUEUED], state, error=reason[:2000]
            ),
        ):
            await self._finished(job_id)
        else:
            self._forget(job_id)  # finished meanwhile (cancelled, done): nothing of it stays here

    async def _finished(self, job_id: str) -> None:
        self._forget(job_id)
        if (job := await self._db(f"reading job {job_id}", lambda: self.store.get(job_id))) is not None:
            await self._emit(JobFinished(job))

    def _forget(self, job_id: str) -> None:
        self._running.discard(job_id)
        self._cancel_asked.discard(job_id)
        self._jobs.pop(job_id, None)
        self.queue.remove(job_id)

    async def _emit(self, event: ManagerEvent) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except Exception:
                log.exception("job listener failed on %s", type(event).__name__)

    async def announce_queued(self, ticket: Ticket) -> None:
        await self._emit(JobQueued(ticket.job, ticket.position, ticket.eta_seconds))
