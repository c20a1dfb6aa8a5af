"""The nats transport: engine workers on any machine, reached through a NATS JetStream work queue.

Workers are ``python -m engine serve --nats URL`` processes (engine/nats_worker.py); the subjects, streams
and bucket are in engine/nats_layout.py, reaching the broker (credentials, retries) in engine/nats_connect.py,
the workers' heartbeats in engine/nats_heartbeat.py and their bookkeeping in bot/transport/nats_roster.py.
This side:

- publishes each job to the ``N.jobs`` work-queue stream with ``Nats-Msg-Id`` = job id, so a job
  published twice (a bot restarted mid-queue re-publishes what was running) is queued once;
- releases jobs only while workers have room: :meth:`free_slots` is the slots announced in the workers'
  heartbeats (in images) minus the images of the jobs this bot has out; a job naming a model goes to its
  model's subject, pulled only by workers that announce it, while they have room (:meth:`accepts`). The
  stream therefore never holds more than the workers can take at once, and the JobManager's order
  (fairness, priorities) is the order jobs start in. This is the priority mechanism: no per-tier subjects
  are needed, and a high-priority job waits behind at most the workers' two batches in hand, like on the
  local transport. Workers also batch what they hold by priority;
- reads results from the ``N.results.*`` stream through a durable consumer (bot/transport/nats_results.py)
  and acks each one only after the JobManager has handled it, so results finished while the bot was down
  are delivered at its next start; progress arrives on core NATS (lossy, never stored);
- sends cancels to every worker (``N.cancel``); the one holding the job stops it, and a cancel is sent
  again whenever a worker reports starting a job the bot wants cancelled.

A worker that dies is not reported as a failure here: JetStream hands its jobs to another worker when
their lease lapses, and the job's result arrives as usual (posted once: results are de-duplicated by job
id, and the JobManager's transitions are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from bot.transport.base import Closed
from bot.transport.nats_results import QueuedEvent, ResultReader
from bot.transport.nats_roster import WorkerRoster
from engine.nats_connect import NatsAuth, connect_with_retry, redact, retry_until_stopped
from engine.nats_heartbeat import read_heartbeat
from engine.nats_layout import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_NAMESPACE,
    HEADER_MSG_ID,
    HEADER_OBJECT,
    Layout,
    inline_limit,
    pack,
)
from engine.protocol import (
    Cancel,
    Event,
    GenerateRequest,
    JobCancelled,
    JobProgress,
    JobStarted,
    ProtocolError,
    Submit,
    decode,
    encode,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger(__name__)

REMEMBER_RESULTS = 10_000  # ids of jobs whose result came in, newest kept (re-submits follow a restart)


class NatsTransport:
    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        inline_limit: int | None = None,
        auth: NatsAuth | None = None,
    ) -> None:
        self.url = url
        self.auth = auth or NatsAuth()
        self.layout = Layout(namespace)
        self.lease_seconds = lease_seconds
        self._inline_limit = inline_limit
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._store: ObjectStore | None = None
        self._ready = asyncio.Event()  # connected, streams in place
        self.roster = WorkerRoster()
        self._bad_heartbeats: set[str] = set()
        # published (or being published), no result yet: job id -> its images (capacity is in images)
        self._inflight: dict[str, int] = {}
        self._inflight_model: dict[str, str] = {}  # those of them naming a model: job id -> the model
        self._model_consumers: set[str] = set()  # models whose consumer has the bot's lease (this connection)
        self._request_objects: dict[str, str] = {}  # job id -> object holding its request body
        self._cancel_wanted: set[str] = set()
        self._results_in: OrderedDict[str, None] = OrderedDict()  # jobs whose result was read, newest last
        self._publishing: dict[str, asyncio.Task[None]] = {}  # submits waiting for the broker
        self._events: asyncio.Queue[QueuedEvent | Closed] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._results = ResultReader(self.layout, self._closing)

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Returns at once, like the local transport: the bot comes online while the broker is reached,
        # and jobs wait in the JobManager until a worker announces itself.
        self._spawn(self._connect_and_serve(), "nats-connect")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect_and_serve(self) -> None:
        nc = await connect_with_retry(
            self.url,
            self.auth,
            name="imaginebot",
            stop=self._closing,
            lost="workers keep their jobs",
            on_reconnect=self._ping,
        )
        if nc is None:
            return
        self._nc = nc
        js = nc.jetstream()

        async def setup() -> ObjectStore:
            store = await self.layout.ensure(js, lease=self.lease_seconds)
            await self._results.ensure_consumer(js)
            return store

        self._store = await retry_until_stopped(setup, self._closing)
        if self._store is None:
            return
        self._js = js
        await nc.subscribe(self.layout.heartbeat_subject, cb=self._on_heartbeat)
        await nc.subscribe(self.layout.events_filter, cb=self._on_live_event)
        self._spawn(self._results.read(js, self._store, self._result_in), "nats-results")
        self._ready.set()
        log.info("NATS transport ready on %s (namespace %s)", redact(self.url), self.layout.namespace)
        await self._ping()

    async def _ping(self) -> None:
        """Ask every worker for a heartbeat now, so a (re)started bot knows its capacity at once."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.publish(self.layout.ping_subject, b"")

    async def close(self) -> None:
        self._closing.set()
        for task in list(self._tasks) + list(self._publishing.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._publishing.values(), return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        # Jobs out on workers keep running; their results wait in the stream for the next start.
        self._events.put_nowait(Closed.CLOSED)

    # ------------------------------------------------------------------------------------- capacity

    def free_slots(self) -> int:
        if not self._ready.is_set() or self._nc is None or not self._nc.is_connected:
            return 0
        return max(0, self.roster.slots() - sum(self._inflight.values()))

    def accepts(self, model: str | None) -> bool:
        free = self.free_slots()
        if not model or free <= 0:
            return free > 0
        out = sum(self._inflight.get(j, 0) for j, m in self._inflight_model.items() if m == model)
        return self.roster.slots(model) - out > 0

    def worker_count(self) -> int:
        return len(self.roster.live())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = read_heartbeat(msg.data, msg.headers)
        except ProtocolError as exc:
            # Once per kind of fault: a misconfigured worker beats every few seconds.
            if len(self._bad_heartbeats) < 100 and str(exc) not in self._bad_heartbeats:
                self._bad_heartbeats.add(str(exc))
                log.warning("bad worker heartbeat ignored: %s", exc)
            return
        if self.roster.heard(beat):
            # The JobManager dispatches after every event: this one tells it there is room now.
            self._events.put_nowait(QueuedEvent(beat.ready))

    # --------------------------------------------------------------------------------------- submit

    async def submit(self, request: GenerateRequest) -> None:
        if request.job_id in self._results_in:
            # Its result came in first (a job re-queued at a restart, its result still in the stream): a
            # publish now would be de-duplicated, so no second result would ever free its slots.
            log.info("job %s already has its result; not queued again", request.job_id)
            return
        self._inflight[request.job_id] = request.count
        if request.model:
            self._inflight_model[request.job_id] = request.model
        if await self._publish(request):
            return
        # The broker is unreachable: keep trying in the background. The job stays "running" in the
        # database meanwhile, and a restarted bot publishes it again (de-duplicated by its id).
        self._publishing[request.job_id] = asyncio.create_task(self._publish_until_sent(request))

    async def _publish(self, request: GenerateRequest) -> bool:
        js, store, nc = self._js, self._store, self._nc
        if js is None or store is None or nc is None:
            return False
        job_id = request.job_id
        headers = {HEADER_MSG_ID: job_id}
        limit = self._inline_limit if self._inline_limit is not None else inline_limit(nc)
        try:
            # A fixed object name: a job published again refers to the same object as the first message.
            data = await pack(store, f"requests/{job_id}", encode(Submit(request)), limit, headers)
            if HEADER_OBJECT in headers:
                self._request_objects[job_id] = headers[HEADER_OBJECT]
            if request.model and request.model not in self._model_consumers:
                await self.layout.ensure_job_consumer(js, request.model, self.lease_seconds)
                self._model_consumers.add(request.model)
            subject = self.layout.jobs_subject_for(request.model)
            ack = await js.publish(subject, data, headers=headers, timeout=5)
        except Exception as exc:
            log.warning("could not queue job %s on NATS (%s)", job_id, exc)
            return False
        if ack.duplicate:
            log.info("job %s was already in the NATS queue (published before a restart)", job_id)
        return True

    async def _publish_until_sent(self, request: GenerateRequest) -> None:
        try:
            delay = 1.0
            while not self._closing.is_set():
                await self._ready.wait()
                if await self._publish(request):
                    return
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
        finally:
            self._publishing.pop(request.job_id, None)

    # --------------------------------------------------------------------------------------- cancel

    async def cancel(self, job_id: str) -> None:
        pending = self._publishing.pop(job_id, None)
        if pending is not None:  # never reached the queue: nobody else can cancel it
            pending.cancel()
            self._job_ended(job_id)
            self._events.put_nowait(QueuedEvent(JobCancelled(job_id)))
            return
        self._cancel_wanted.add(job_id)
        await self._send_cancel(job_id)

    async def _send_cancel(self, job_id: str) -> None:
        if self._nc is None:
            return
        try:
            await self._nc.publish(self.layout.cancel_subject, encode(Cancel(job_id)))
        except Exception as exc:
            log.warning("could not send the cancel of job %s (%s)", job_id, exc)

    # --------------------------------------------------------------------------------------- events

    async def _on_live_event(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except ProtocolError as exc:
            log.warning("bad progress message on %s dropped: %s", msg.subject, exc)
            return
        if not isinstance(event, JobStarted | JobProgress) or msg.subject != self.layout.events_subject(
            event.job_id
        ):
            return
        if isinstance(event, JobStarted) and event.job_id in self._cancel_wanted:
            # The cancel went out before this worker held the job (it was still queued): send it again.
            await self._send_cancel(event.job_id)
        self._events.put_nowait(QueuedEvent(event))

    def _result_in(self, job_id: str, item: QueuedEvent) -> None:
        self._job_ended(job_id)
        self._results_in[job_id] = None
        while len(self._results_in) > REMEMBER_RESULTS:
            self._results_in.popitem(last=False)
        self._events.put_nowait(item)

    def _job_ended(self, job_id: str) -> None:
        self._inflight.pop(job_id, None)
        self._inflight_model.pop(job_id, None)
        self._cancel_wanted.discard(job_id)
        name = self._request_objects.pop(job_id, None)
        if name is not None:
            self._spawn(self._delete_object(name), "nats-delete")

    async def _delete_object(self, name: str) -> None:
        if self._store is not None:
            try:
                await self._store.delete(name)
            except Exception as exc:  # it expires with the bucket's TTL anyway
                log.debug("object %s not deleted: %s", name, exc)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._events.get()
            if item is Closed.CLOSED:
                return
            yield item.event
            # Resumed: the JobManager has handled the event (it awaits each one before asking for the next).
            if item.msg is not None:
                with contextlib.suppress(Exception):
                    await item.msg.ack()
            if item.object_name is not None:
                await self._delete_object(item.object_name)
            if item.handled is not None:
                item.handled.set()
