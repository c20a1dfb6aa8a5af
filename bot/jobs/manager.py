"""The JobManager: persist → fair queue → dispatch to engine workers → events back to the bot.

Every state change is written to the database before it is acted on, so a bot killed at any point
finds its work again on start (:meth:`JobManager.start` re-queues what was queued or running, and
re-announces results that were finished but never delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.db.jobs import JobStore, SavedImage
from bot.db.models import Job, JobState
from bot.jobs.events import JobDispatched, JobFinished, JobQueued, ManagerEvent
from bot.jobs.fairness import FairQueue, QueuedJob
from bot.transport.base import Transport
from engine import protocol
from engine.protocol import JobKind

log = logging.getLogger(__name__)

Listener = Callable[[ManagerEvent], Awaitable[None]]

MAX_ATTEMPTS = 2  # a job whose worker dies twice fails with a reason instead of looping


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Ticket:
    job: Job
    position: int
    eta_seconds: float | None


class SpeedMeter:
    """Engine seconds per unit of work (one 512×512 image-step), smoothed, for queue wait estimates."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.seconds_per_unit: float | None = None

    @staticmethod
    def units(job: Job) -> float:
        steps = job.steps if job.kind == JobKind.TXT2IMG else max(1, int(job.steps * (job.strength or 1.0)))
        return max(1, steps) * job.count * (job.width * job.height) / (512 * 512)

    def record(self, job: Job, seconds: float) -> None:
        rate = seconds / self.units(job)
        prev = self.seconds_per_unit
        self.seconds_per_unit = rate if prev is None else prev + self.alpha * (rate - prev)

    def estimate(self, jobs: list[Job], workers: int) -> float | None:
        if self.seconds_per_unit is None:
            return None
        return sum(self.units(j) for j in jobs) * self.seconds_per_unit / max(1, workers)


class JobManager:
    def __init__(
        self, store: JobStore, transport: Transport, output_dir: Path, *, preview_every: int = 0
    ) -> None:
        self.store = store
        self.transport = transport
        self.output_dir = output_dir
        self.preview_every = preview_every
        self.queue = FairQueue()
        self.speed = SpeedMeter()
        self._jobs: dict[str, Job] = {}  # queued or running jobs, the rows as last written
        self._running: set[str] = set()
        self._listeners: list[Listener] = []
        self._pump: asyncio.Task[None] | None = None
        self._dispatch_lock = asyncio.Lock()
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
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

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
            job.init_image_path = str(await asyncio.to_thread(self._save_input, job.id, init_image))
        await self.store.create(job, guild_name=guild_name, user_name=user_name)
        self._enqueue(job)
        position = self.queue.position(job.id) or 0
        ticket = Ticket(job, position, self.estimate_wait(job.id))
        await self._dispatch()
        return ticket

    def _enqueue(self, job: Job) -> None:
        self._jobs[job.id] = job
        self.queue.push(QueuedJob(job.id, job.user_id, job.priority, job.count))

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
        if self.queue.remove(job_id) is not None:
            if await self.store.transition(job_id, [JobState.QUEUED], JobState.CANCELLED, error="cancelled"):
                await self._finished(job_id)
            return True
        if job_id in self._running:
            await self.transport.cancel(job_id)
            return True
        return False

    async def mark_delivered(self, job_id: str, message_id: int | None) -> None:
        await self.store.mark_delivered(job_id, message_id)

    # ------------------------------------------------------------------------------------ dispatch

    async def _dispatch(self) -> None:
        async with self._dispatch_lock:
            while not self._closed and len(self.queue) and self.transport.free_slots() > 0:
                queued = self.queue.pop()
                assert queued is not None
                job = self._jobs[queued.job_id]
                attempt = await self.store.start_attempt(job.id)
                if attempt is None:  # cancelled or finished meanwhile
                    self._jobs.pop(job.id, None)
                    continue
                job.state, job.attempts = JobState.RUNNING, attempt
                self._running.add(job.id)
                try:
                    request = await asyncio.to_thread(self._request_for, job)
                except OSError as exc:
                    await self._fail(job.id, f"its input image could not be read ({exc.strerror})")
                    continue
                await self.transport.submit(request)
                await self._emit(JobDispatched(job))

    def _request_for(self, job: Job) -> protocol.GenerateRequest:
        init = Path(job.init_image_path).read_bytes() if job.init_image_path else None
        return protocol.GenerateRequest(
            job_id=job.id,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            seed=job.seed,
            steps=job.steps,
            cfg_scale=job.cfg_scale,
            width=job.width,
            height=job.height,
            count=job.count,
            sampler=job.sampler,
            model=job.model,
            kind=job.kind,
            strength=job.strength if job.strength is not None else 0.75,
            init_image=init,
            priority=job.priority,
            preview_every=self.preview_every,
            safety_check=bool(job.safety_check),
        )

    # -------------------------------------------------------------------------------------- events

    async def _pump_events(self) -> None:
        async for event in self.transport.events():
            if self._closed:
                return
            try:
                await self._on_engine_event(event)
            except Exception:
                log.exception("handling engine event %s failed", type(event).__name__)
            await self._dispatch()

    async def _on_engine_event(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.JobProgress):
            if event.job_id in self._running:
                await self._emit(event)
        elif isinstance(event, protocol.JobDone):
            await self._done(event)
        elif isinstance(event, protocol.JobFailed):
            await self._failed(event)
        elif isinstance(event, protocol.JobCancelled):
            if await self.store.transition(
                event.job_id, [JobState.RUNNING, JobState.QUEUED], JobState.CANCELLED, error="cancelled"
            ):
                await self._finished(event.job_id)

    async def _done(self, event: protocol.JobDone) -> None:
        job = self._jobs.get(event.job_id) or await self.store.get(event.job_id)
        if job is None:
            log.warning("result for unknown job %s dropped", event.job_id)
            return
        # Files first, then the row: a crash between the two leaves the job running, so it is re-run
        # rather than recorded with missing files.
        saved = await asyncio.to_thread(self._save_images, job, event.images)
        if await self.store.finish(job.id, saved, event.engine_seconds, event.model):
            self.speed.record(job, event.engine_seconds)
            await self._finished(job.id)
        else:
            log.info("job %s finished twice; the second result is ignored", job.id)
            self._forget(job.id)

    async def _failed(self, event: protocol.JobFailed) -> None:
        job = self._jobs.get(event.job_id)
        if event.retryable and job is not None and job.attempts < MAX_ATTEMPTS:
            if await self.store.transition(job.id, [JobState.RUNNING], JobState.QUEUED):
                log.warning("job %s lost its worker (%s); running it again", job.id, event.reason)
                self._running.discard(job.id)
                job.state = JobState.QUEUED
                self._enqueue(job)
            return
        reason = event.reason
        if event.retryable:
            reason = f"{event.reason}, twice; this request seems to crash the engine"
        await self._fail(event.job_id, reason)

    async def _fail(self, job_id: str, reason: str) -> None:
        if await self.store.transition(
            job_id, [JobState.RUNNING, JobState.QUEUED], JobState.FAILED, error=reason[:2000]
        ):
            await self._finished(job_id)

    async def _finished(self, job_id: str) -> None:
        self._forget(job_id)
        job = await self.store.get(job_id)
        if job is not None:
            await self._emit(JobFinished(job))

    def _forget(self, job_id: str) -> None:
        self._running.discard(job_id)
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

    # --------------------------------------------------------------------------------------- files

    def _day_dir(self) -> Path:
        day = dt.datetime.now(dt.UTC)
        path = self.output_dir / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _save_images(self, job: Job, images: list[protocol.ImageResult]) -> list[SavedImage]:
        folder = self._day_dir()
        saved: list[SavedImage] = []
        for image in images:
            path = folder / f"{job.id}_{image.index}.png"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(image.png)
            tmp.replace(path)  # atomic: a reader never sees half a file
            width, height = _png_size(image.png) or (job.width, job.height)
            saved.append(SavedImage(image.index, image.seed, str(path), width, height, image.nsfw))
        return saved

    def _save_input(self, job_id: str, data: bytes) -> Path:
        folder = self.output_dir / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{job_id}.img"
        path.write_bytes(data)
        return path


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk sits at a fixed offset in every PNG: no need to decode the image to size it.
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None
