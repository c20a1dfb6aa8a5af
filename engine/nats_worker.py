"""``python -m engine serve --nats URL``: a scale-out worker that pulls jobs from NATS JetStream.

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

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.nats_layout import (
    DEFAULT_NAMESPACE,
    HEADER_HEARTBEAT,
    HEADER_MSG_ID,
    HEADER_SLOTS,
    HEADER_STATE,
    STATE_LEAVING,
    STATE_READY,
    Layout,
    inline_limit,
    pack,
    redact,
    unpack,
)
from engine.protocol import (
    Cancel,
    Event,
    GenerateRequest,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    JobStarted,
    ProtocolError,
    Submit,
    WorkerReady,
    decode,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger("engine.nats_worker")

DEFAULT_HEARTBEAT_SECONDS = 2.0
DEFAULT_MAX_DELIVERIES = 3
REMEMBER_CANCELS = 10_000  # cancels for jobs this worker does not hold (yet), newest kept
RESULT_RETRY_SECONDS = 30.0  # then give up without acking: the job is redelivered and reported by another


class RunnerLike(Protocol):
    """What the worker needs from the engine's Runner (and from the load-simulation runner)."""

    worker_id: str
    max_batch: int

    @property
    def model_name(self) -> str: ...

    @property
    def device_name(self) -> str: ...

    def prepare(self, request: GenerateRequest) -> Any: ...

    def plan(self, jobs: Iterable[Any]) -> list[tuple[Any, list[int]]]: ...

    def run_batch(self, batch: Sequence[tuple[Any, list[int]]], emit: Callable[[Event], None]) -> None: ...

    def cancel(self, job: Any, emit: Callable[[Event], None]) -> bool: ...

    def fail(self, job: Any, reason: str, emit: Callable[[Event], None], retryable: bool = False) -> bool: ...

    def abort(self) -> None: ...

    def wait_idle(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


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
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        inline_limit: int | None = None,
        fetch_timeout: float = 2.0,
    ) -> None:
        self.runner = runner
        self.url = url
        self.layout = Layout(namespace)
        # One job beyond a full batch waits here, so the GPU never idles between batches.
        # Slots count images: two batches' worth in hand keeps the next batch ready, for 1-image jobs too.
        self.slots = slots if slots is not None else 2 * runner.max_batch
        self.heartbeat_seconds = heartbeat_seconds
        self.max_deliveries = max_deliveries
        self.fetch_timeout = fetch_timeout
        self._inline_limit = inline_limit
        self._held: dict[str, _Held] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._room = asyncio.Event()  # a slot was freed, or we are stopping
        self._work = asyncio.Event()  # a job was added, or we are stopping
        self._stop = asyncio.Event()
        self._lease_check = asyncio.Event()  # re-read the lease now
        self._stopping = False  # draining: no new jobs
        self._aborting = False  # second signal: stop the running batch too
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._store: ObjectStore | None = None
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
        nc = await self._connect()
        if nc is None:
            return 0  # stopped before the broker was reached
        self._nc = nc
        js = nc.jetstream()
        self._js = js
        try:
            self._store = await self._ensure(js)
            if self._store is None:
                return 0
            psub = await js.pull_subscribe_bind(
                durable=self.layout.workers_consumer, stream=self.layout.jobs_stream
            )
            await nc.subscribe(self.layout.cancel_subject, cb=self._on_cancel)
            await nc.subscribe(self.layout.ping_subject, cb=self._on_ping)
            publisher = self._supervised(self._publish_events(), "publish")
            batches = self._supervised(self._run_batches(), "batches")
            fetcher = self._supervised(self._fetch(psub), "fetch")
            background = [
                asyncio.create_task(self._extend_leases(), name="leases"),
                asyncio.create_task(self._heartbeats(), name="heartbeats"),
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
            await self._send_heartbeat(STATE_LEAVING)
            log.debug("drain: said goodbye")
        finally:
            # Not nc.drain(): it waits on the pull subscription's internal queue, which fetch() never
            # marks done. Everything that matters (results, acks) was awaited above; flush the rest.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await nc.close()
            self._gpu.shutdown(wait=False)
        log.info("worker %s stopped", self.worker_id)
        return 0

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

    async def _connect(self) -> Client | None:
        import nats

        async def on_error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        async def on_disconnect() -> None:
            if not self._stopping:
                log.warning("NATS connection lost; reconnecting (held jobs keep running)")

        async def on_reconnect() -> None:
            log.info("NATS connection back")

        while not self._stop.is_set():
            try:
                return await nats.connect(
                    self.url,
                    name=f"imagine-worker {self.worker_id}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
            except Exception as exc:
                log.warning("cannot reach NATS at %s (%s); retrying in 2 s", redact(self.url), exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2)
        return None

    async def _ensure(self, js: JetStreamContext) -> ObjectStore | None:
        while not self._stop.is_set():
            try:
                store = await self.layout.ensure(js)
                self.lease = await self.layout.lease(js)
                return store
            except Exception as exc:
                log.warning("NATS JetStream not usable (%s); is the server run with -js? retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2)
        return None

    # ------------------------------------------------------------------------------------------ intake

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
            await _quietly(msg.nak())  # straight back to the queue for another worker
            return
        job_id = (msg.headers or {}).get(HEADER_MSG_ID, "")
        assert self._store is not None
        try:
            body, _ = await unpack(self._store, msg.data, msg.headers)
            message = decode(body)
            if not isinstance(message, Submit):
                raise ProtocolError(f"expected Submit, got {type(message).__name__}")
        except Exception as exc:
            # It will never become readable: fail it (when we know its id) rather than redeliver it forever.
            log.error("unreadable job message %s dropped: %s", job_id or "(no id)", exc)
            if job_id:
                await self._publish_result(JobFailed(job_id, f"the engine could not read the job: {exc}"))
            await _quietly(msg.term())
            return
        request = message.request
        job_id = request.job_id
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
                await _quietly(msg.ack())
            return
        if job_id in self._cancelled:
            if await self._publish_result(JobCancelled(job_id)):
                await _quietly(msg.ack())
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
            await _quietly(msg.ack())

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

    async def _publish_events(self) -> None:
        assert self._nc is not None
        while True:
            event = await self._events.get()
            if event is None:
                return
            if isinstance(event, JobStarted | JobProgress):
                await self._publish_live(event)
                continue
            if not isinstance(event, JobDone | JobFailed | JobCancelled):
                continue
            held = self._held.get(event.job_id)
            try:
                if isinstance(event, JobFailed) and event.retryable:
                    if held is not None:
                        await _quietly(held.msg.nak())  # back to the queue for another worker
                elif await self._publish_result(event) and held is not None:
                    await _quietly(held.msg.ack())  # only now: a crash before this reruns the job elsewhere
            except Exception:
                log.exception("reporting job %s failed; its lease will lapse and it runs again", event.job_id)
            finally:
                # The lease was extended while the result was being published; the slot frees only now.
                # Unacked, a job dropped here stops being extended and goes back to the queue.
                self._held.pop(event.job_id, None)
                self._room.set()

    async def _publish_live(self, event: JobStarted | JobProgress) -> None:
        assert self._nc is not None
        body = encode(event)
        if len(body) > inline_limit(self._nc) and isinstance(event, JobProgress):
            body = encode(JobProgress(event.job_id, event.step, event.total))  # drop an oversized preview
        try:
            await self._nc.publish(self.layout.events_subject(event.job_id), body)
        except Exception as exc:  # progress is best effort
            log.debug("progress for %s not sent: %s", event.job_id, exc)

    async def _publish_result(self, event: JobDone | JobFailed | JobCancelled) -> bool:
        """Publish a terminal event durably; False when the broker would not take it (the job is then not
        acked and comes back to the queue)."""
        assert self._js is not None and self._store is not None and self._nc is not None
        job_id = event.job_id
        limit = self._inline_limit if self._inline_limit is not None else inline_limit(self._nc)
        deadline = asyncio.get_running_loop().time() + RESULT_RETRY_SECONDS
        while True:
            try:
                headers = {HEADER_MSG_ID: job_id}
                data = await pack(
                    self._store, f"results/{job_id}/{self.worker_id}", encode(event), limit, headers
                )
                await self._js.publish(self.layout.results_subject(job_id), data, headers=headers)
                return True
            except Exception as exc:
                if self._aborting or asyncio.get_running_loop().time() > deadline:
                    log.error("result of job %s not published (%s); it will run again elsewhere", job_id, exc)
                    return False
                log.warning("publishing the result of job %s failed (%s); retrying", job_id, exc)
                await asyncio.sleep(1)

    # ---------------------------------------------------------------------------------- subscriptions

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except ProtocolError:
            return
        if not isinstance(message, Cancel):
            return
        held = self._held.get(message.job_id)
        if held is not None:
            log.info("cancelling job %s", message.job_id)
            self.runner.cancel(held.job, self._emit)
            return
        # Not ours (yet): it may still be in the queue and reach us later.
        self._cancelled[message.job_id] = None
        while len(self._cancelled) > REMEMBER_CANCELS:
            self._cancelled.popitem(last=False)

    async def _on_ping(self, msg: Msg) -> None:
        self._lease_check.set()
        if not self._stopping:
            await self._send_heartbeat(STATE_READY)

    async def _heartbeats(self) -> None:
        while True:
            await self._send_heartbeat(STATE_LEAVING if self._stopping else STATE_READY)
            await asyncio.sleep(self.heartbeat_seconds)

    async def _send_heartbeat(self, state: str) -> None:
        assert self._nc is not None
        ready = WorkerReady(
            worker_id=self.worker_id,
            model=self.runner.model_name,
            device=self.runner.device_name,
            pid=os.getpid(),
            max_batch=self.runner.max_batch,
        )
        headers = {
            HEADER_SLOTS: str(self.slots),
            HEADER_HEARTBEAT: f"{self.heartbeat_seconds:g}",
            HEADER_STATE: state,
        }
        try:
            await self._nc.publish(self.layout.heartbeat_subject, encode(ready), headers=headers)
            if state == STATE_LEAVING:
                await self._nc.flush(timeout=2)
        except Exception as exc:
            log.debug("heartbeat not sent: %s", exc)

    async def _extend_leases(self) -> None:
        assert self._js is not None
        while True:
            try:
                self.lease = await self.layout.lease(self._js)  # the bot may have changed it
            except Exception as exc:
                log.debug("lease not read: %s", exc)
            for held in list(self._held.values()):
                await _quietly(held.msg.in_progress())
            # Every third of the lease (2 s at most), or at once when the bot pings: it pings after
            # setting the lease, so a lease it shortened is seen before it sends any job.
            self._lease_check.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_check.wait(), max(0.2, min(2.0, (self.lease or 30.0) / 3)))


async def _settle(task: asyncio.Task[None]) -> None:
    """Wait for ``task``; a failure was already logged by the supervisor."""
    with contextlib.suppress(Exception):
        await task


async def _quietly(action: Any) -> None:
    """Await an ack/nak/in-progress; a failure (connection gone, already acked) is only logged: the lease
    then decides."""
    try:
        await action
    except Exception as exc:
        log.debug("JetStream ack-type reply failed: %s", exc)


# ---------------------------------------------------------------------------------------------- CLI


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's own flags (the model flags come from ``engine.__main__``)."""
    parser.add_argument(
        "--nats",
        default=os.environ.get("NATS_URL") or None,
        help="NATS server URL, e.g. nats://broker:4222 (or NATS_URL)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("NATS_NAMESPACE") or DEFAULT_NAMESPACE,
        help=f"subject/stream prefix shared with the bot (default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument("--worker-id", default=os.environ.get("ENGINE_WORKER_ID") or None)
    parser.add_argument("--slots", type=int, default=None, help="images held (default: 2 x max batch)")
    parser.add_argument("--heartbeat-seconds", type=float, default=DEFAULT_HEARTBEAT_SECONDS)
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=DEFAULT_MAX_DELIVERIES,
        help="fail a job delivered more often than this (it keeps killing workers)",
    )
    parser.add_argument(
        "--simulate-seconds-per-step",
        type=float,
        default=None,
        metavar="SECONDS",
        help="LOAD SIMULATION for benchmarks/tests: sleep this long per step instead of running a model",
    )


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``python -m engine serve``."""
    logging.basicConfig(
        level=os.environ.get("ENGINE_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format=f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    if not args.nats:
        print("engine serve: --nats URL is required (or NATS_URL)", file=sys.stderr)
        return 2
    worker_id = args.worker_id or f"{os.uname().nodename}-{os.getpid()}"
    try:
        runner = _make_runner(args, worker_id)
    except Exception as exc:
        print(f"engine: cannot start: {exc}", file=sys.stderr)
        return 2
    worker = NatsWorker(
        runner,
        args.nats,
        namespace=args.namespace,
        slots=args.slots,
        heartbeat_seconds=args.heartbeat_seconds,
        max_deliveries=args.max_deliveries,
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, worker.request_stop)
        return await worker.run()

    return asyncio.run(main())


def _make_runner(args: argparse.Namespace, worker_id: str) -> RunnerLike:
    if args.simulate_seconds_per_step is not None:
        from engine.simulate import SimulatedRunner

        log.warning("LOAD SIMULATION: no model; %g s per step", args.simulate_seconds_per_step)
        return SimulatedRunner(args.simulate_seconds_per_step, max_batch=args.max_batch, worker_id=worker_id)
    if not args.model:
        raise ValueError("--model is required (or ENGINE_MODEL)")
    from engine.worker import runner_from_args

    return runner_from_args(args, worker_id)
