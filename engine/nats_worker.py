"""``python -m engine serve``: a scale-out worker that pulls jobs from NATS JetStream (its command line is
engine/nats_serve.py, its replies engine/nats_publish.py, its heartbeats and leases engine/nats_presence.py).

Run one per GPU, on any machine that reaches the broker. The worker loads its model, then:

- announces itself on ``N.workers`` every ``--heartbeat-seconds`` (and at once when the bot pings) with
  its slots (in images: two batches' worth), so the bot releases jobs only when someone can take them;
- pulls one job at a time from the shared ``workers`` consumer while it holds fewer images than its slots, and
  extends the lease of every job it holds (``msg.in_progress()``) every third of ``ack_wait`` (2 s at most);
- runs held jobs in batches on the engine's :class:`~engine.runner.Runner` (a thread; this loop never
  blocks on the GPU), publishing JobStarted/JobProgress on core NATS as they happen;
- publishes the result durably on ``N.results.<job>`` (deduplicated by job id; bodies over the server's
  message limit go through the object store) and only then acks the job.

A worker that dies without acking loses nothing: its jobs come back to the queue when their lease lapses.
A job delivered more than ``--max-deliveries`` times (it keeps killing workers) fails with a reason instead
of looping. Cancels arrive on ``N.cancel``; the worker holding the job stops it at the next step, and the
others remember the id for a while in case the job reaches them later.

SIGTERM/SIGINT drains: no new jobs, jobs not started go back to the queue at once (nak), the running
batch finishes and is published. A second signal stops the batch at its next step and naks it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.nats_connect import NatsAuth, connect_with_retry, redact, retry_until_stopped
from engine.nats_heartbeat import (
    DEFAULT_INTERVAL,
    INTERVAL,
    SLOTS,
    STATE_LEAVING,
)
from engine.nats_inbox import CancelMemory, cancelled_job, job_id_of, quietly, read_submit
from engine.nats_layout import DEFAULT_NAMESPACE, Layout
from engine.nats_presence import Presence
from engine.nats_publish import ResultPublisher
from engine.protocol import (
    Event,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    JobStarted,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

    from engine.nats_serve import RunnerLike

log = logging.getLogger("engine.nats_worker")

DEFAULT_MAX_DELIVERIES = 3
CLOSE_SECONDS = 5.0  # closing the broker connection when the worker leaves


@dataclass(slots=True)
class _Held:
    msg: Msg  # the latest delivery: the one whose lease is extended and which is acked
    job: Any  # the runner's job


class NatsWorker:
    def __init__(
        self,
        runner: RunnerLike,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        slots: int | None = None,
        heartbeat_seconds: float = DEFAULT_INTERVAL,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        inline_limit: int | None = None,
        fetch_timeout: float = 2.0,
        auth: NatsAuth | None = None,
        models: Sequence[str] = (),
    ) -> None:
        self.runner = runner
        self.models = tuple(models)  # announced, and pulled from their own queues (engine/nats_layout.py)
        self.url = url
        self.auth = auth or NatsAuth()
        self.layout = Layout(namespace)
        # One job beyond a full batch waits here, so the GPU never idles between batches.
        # Slots count images: two batches' worth in hand keeps the next batch ready, for 1-image jobs too.
        self.slots = slots if slots is not None else min(SLOTS.hi, 2 * runner.max_batch)
        # The bot ignores heartbeats out of these bounds: refuse them here, where the operator sees why.
        if self.slots not in SLOTS:
            raise ValueError(f"slots must be between {SLOTS.lo} and {SLOTS.hi}, got {self.slots}")
        if heartbeat_seconds not in INTERVAL:
            raise ValueError(
                f"heartbeat seconds must be {INTERVAL.lo:g}-{INTERVAL.hi:g}, got {heartbeat_seconds}"
            )
        self.heartbeat_seconds = heartbeat_seconds
        self.max_deliveries = max_deliveries
        self.fetch_timeout = fetch_timeout
        self._inline_limit = inline_limit
        self._held: dict[str, _Held] = {}
        self._cancels = CancelMemory()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._room = asyncio.Event()  # a slot was freed, or we are stopping
        self._work = asyncio.Event()  # a job was added, or we are stopping
        self._stop = asyncio.Event()
        self._stopping = False  # draining: no new jobs
        self._aborting = False  # second signal: stop the running batch too
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._store: ObjectStore | None = None
        self._publisher: ResultPublisher | None = None
        self.lease = 0.0
        self._crashed = False

    @property
    def worker_id(self) -> str:
        return self.runner.worker_id

    # --------------------------------------------------------------------------------------- control

    def request_stop(self) -> None:
        """First call: drain. Second call: abort the running batch (its jobs go back to the queue)."""
        if self._stop.is_set():
            if not self._aborting:
                log.warning("second stop signal: abandoning the running batch")
                self._aborting = True
                self.runner.abort()
            return
        log.info("stopping: finishing the running batch; jobs not started go back to the queue")
        self._stop.set()

    async def run(self) -> int:
        """Serve until :meth:`request_stop`; returns the exit status."""
        self._loop = asyncio.get_running_loop()
        name = f"imagine-worker {self.worker_id}"
        nc = await connect_with_retry(
            self.url, self.auth, name=name, stop=self._stop, lost="held jobs keep running"
        )
        if nc is None:
            return 0  # stopped before the broker was reached
        self._nc = nc
        js = nc.jetstream()
        self._js = js
        try:
            self._store = await retry_until_stopped(lambda: self._setup(js), self._stop)
            if self._store is None:
                return 0
            self._publisher = ResultPublisher(
                nc, js, self._store, self.layout, self.worker_id, self._inline_limit
            )
            presence = Presence(self, nc, js)
            psubs = await self.layout.bind_jobs(js, self.models)
            await nc.subscribe(self.layout.cancel_subject, cb=self._on_cancel)

            async def on_ping(msg: Msg) -> None:  # nats-py wants a coroutine function
                await presence.pinged(self._stopping)

            await nc.subscribe(self.layout.ping_subject, cb=on_ping)
            publisher = self._supervised(self._publish_events(), "publish")
            batches = self._supervised(self._run_batches(), "batches")
            fetcher = self._supervised(self._fetch_each(psubs), "fetch")
            held = lambda: [h.msg for h in self._held.values()]  # noqa: E731
            background = [
                asyncio.create_task(presence.extend_leases(held), name="leases"),
                asyncio.create_task(presence.heartbeats(lambda: self._stopping), name="heartbeats"),
            ]
            log.info(
                "worker %s serving %s on %s: %d slot(s), lease %.0f s, broker %s",
                self.worker_id,
                self.runner.model_name,
                self.runner.device_name,
                self.slots,
                self.lease,
                redact(self.url),
            )
            await self._stop.wait()
            await self._drain(fetcher, batches, publisher)
            if self._crashed:
                return 1  # let the process manager start a fresh worker
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await presence.send_heartbeat(STATE_LEAVING)
            log.debug("drain: said goodbye")
        finally:
            # Not nc.drain(): it waits on the pull subscription's internal queue, which fetch() never
            # marks done. Everything that matters (results, acks) was awaited above; flush the rest.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
            with contextlib.suppress(Exception):  # TimeoutError included: leaving is bounded whatever
                # the broker connection does (a close once waited past a test's 20 s on a loaded machine).
                await asyncio.wait_for(nc.close(), CLOSE_SECONDS)
            self._gpu.shutdown(wait=False)
        log.info("worker %s stopped", self.worker_id)
        return 0

    async def _setup(self, js: JetStreamContext) -> ObjectStore:
        store = await self.layout.ensure(js)
        self.lease = await self.layout.lease(js)
        return store

    def _supervised(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A worker whose fetch, batch or publish loop died would still send heartbeats and hold slots:
        # stop it instead (its jobs go back to the queue) so a process manager can start a fresh one.
        if task.cancelled() or task.exception() is None or self._stopping:
            return
        log.error("the %s loop failed; stopping this worker", task.get_name(), exc_info=task.exception())
        self._crashed = True
        self._stop.set()

    # ------------------------------------------------------------------------------------------ intake

    async def _fetch_each(self, psubs: list[JetStreamContext.PullSubscription]) -> None:
        await asyncio.gather(*(self._fetch(psub) for psub in psubs))  # jobs naming none, then each model's

    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            if sum(h.job.request.count for h in self._held.values()) >= self.slots:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await psub.fetch(1, timeout=self.fetch_timeout)
            except TimeoutError:
                continue  # nothing queued
            except Exception as exc:
                log.warning("fetching a job failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                await self._accept(msg)

    async def _accept(self, msg: Msg) -> None:
        if self._stopping:
            await quietly(msg.nak())  # straight back to the queue for another worker
            return
        job_id = job_id_of(msg.headers)
        assert self._store is not None
        try:
            request = await read_submit(self._store, msg, job_id)
        except Exception as exc:
            # It will never become readable: fail it (when we know its id) rather than redeliver it forever.
            log.error("unreadable job message %s dropped: %s", job_id or "(no id)", exc)
            if job_id:
                await self._publish_result(JobFailed(job_id, f"the engine could not read the job: {exc}"))
            await quietly(msg.term())
            return
        held = self._held.get(job_id)
        if held is not None:
            held.msg = msg  # redelivered while we still hold it: keep running it, ack the newest delivery
            return
        delivered = msg.metadata.num_delivered
        if delivered > self.max_deliveries:
            reason = (
                f"the job was handed to an engine worker {delivered - 1} times and the worker stopped each "
                "time; this request seems to crash the engine"
            )
            if await self._publish_result(JobFailed(job_id, reason)):
                await quietly(msg.ack())
            return
        if job_id in self._cancels:
            if await self._publish_result(JobCancelled(job_id)):
                await quietly(msg.ack())
            return
        try:
            job = await asyncio.to_thread(self.runner.prepare, request)
        except ValueError as exc:  # RequestError: the request's own fault
            failure = JobFailed(job_id, str(exc))
        except Exception as exc:
            log.exception("could not prepare job %s", job_id)
            failure = JobFailed(job_id, f"bad request: {exc}")
        else:
            job.emit = self._emit
            self._held[job_id] = _Held(msg, job)
            if delivered > 1:
                log.info("job %s redelivered (delivery %d): its last worker stopped", job_id, delivered)
            self._work.set()
            return
        if await self._publish_result(failure):
            await quietly(msg.ack())

    # -------------------------------------------------------------------------------------------- work

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            self._work.clear()
            while not self._aborting:
                batch = self.runner.plan([h.job for h in self._held.values()])
                if not batch:
                    break
                try:
                    await loop.run_in_executor(self._gpu, self.runner.run_batch, batch, self._emit)
                except Exception as exc:  # run_batch reports request faults itself; this is a bug
                    log.exception("a batch failed")
                    for job, _ in batch:
                        self.runner.fail(job, f"generation failed: {type(exc).__name__}: {exc}", self._emit)
            if self._stopping and (self._aborting or not self._has_work()):
                return

    def _has_work(self) -> bool:
        return any(not h.job.finished and h.job.remaining > 0 for h in self._held.values())

    async def _drain(
        self, fetcher: asyncio.Task[None], batches: asyncio.Task[None], publisher: asyncio.Task[None]
    ) -> None:
        self._stopping = True
        self._room.set()
        await _settle(fetcher)  # returns within fetch_timeout; a job it still receives is nak'ed
        log.debug("drain: no longer fetching")
        # Jobs not started go back at once (a retryable failure is a nak); this runs without awaiting,
        # so the batch loop cannot plan them meanwhile.
        for held in list(self._held.values()):
            job = held.job
            if not job.running and job.next_index == 0:
                self.runner.fail(job, "worker is shutting down", self._emit, retryable=True)
        self._work.set()
        await _settle(batches)
        log.debug("drain: batches done")
        await asyncio.to_thread(self.runner.wait_idle, 60)  # PNGs being encoded still go out
        for held in list(self._held.values()):
            self.runner.fail(held.job, "worker is shutting down", self._emit, retryable=True)
        # call_soon keeps FIFO order with the events the runner handed over through call_soon_threadsafe.
        asyncio.get_running_loop().call_soon(self._events.put_nowait, None)
        await _settle(publisher)
        log.debug("drain: results published")
        await asyncio.to_thread(self.runner.close)

    # ------------------------------------------------------------------------------------------ events

    def _emit(self, event: Event) -> None:
        """Called from the runner's threads (and this loop): hand the event to the publisher task."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def _publish_result(self, event: JobDone | JobFailed | JobCancelled) -> bool:
        assert self._publisher is not None
        return await self._publisher.publish_result(event, lambda: self._aborting)

    async def _publish_events(self) -> None:
        assert self._nc is not None
        while True:
            event = await self._events.get()
            if event is None:
                return
            if isinstance(event, JobStarted | JobProgress):
                assert self._publisher is not None
                await self._publisher.publish_live(event)
                continue
            if not isinstance(event, JobDone | JobFailed | JobCancelled):
                continue
            held = self._held.get(event.job_id)
            try:
                if isinstance(event, JobFailed) and event.retryable:
                    if held is not None:
                        await quietly(held.msg.nak())  # back to the queue for another worker
                elif await self._publish_result(event) and held is not None:
                    await quietly(held.msg.ack())  # only now: a crash before this reruns the job elsewhere
            except Exception:
                log.exception("reporting job %s failed; its lease will lapse and it runs again", event.job_id)
            finally:
                # The lease was extended while the result was being published; the slot frees only now.
                # Unacked, a job dropped here stops being extended and goes back to the queue.
                self._held.pop(event.job_id, None)
                self._room.set()

    # ---------------------------------------------------------------------------------- subscriptions

    async def _on_cancel(self, msg: Msg) -> None:
        job_id = cancelled_job(msg.data)
        if job_id is None:
            return
        held = self._held.get(job_id)
        if held is not None:
            log.info("cancelling job %s", job_id)
            self.runner.cancel(held.job, self._emit)
            return
        self._cancels.remember(job_id)  # not ours (yet): it may still be in the queue and reach us later


async def _settle(task: asyncio.Task[None]) -> None:
    """Wait for ``task``; a failure was already logged by the supervisor."""
    with contextlib.suppress(Exception):
        await task
