"""The NATS side of the wire: subject, stream and bucket names, and the rules for large bodies.

Shared, like :mod:`engine.protocol`, by the bot's nats transport (``bot/transport/nats.py``) and the
``python -m engine serve`` workers (``engine/nats_worker.py``); it imports nothing heavy (nats-py only).
Message bodies are :func:`engine.protocol.encode` bytes.

Layout for the namespace ``N`` (default ``imagine``)::

    N.jobs             stream N-jobs (work queue, deduplicated by Nats-Msg-Id = job id for 10 min):
                       jobs naming no model; durable pull consumer "workers", shared by every worker;
                       ack_wait is the lease
    N.jobs.m.<model>   the same stream: jobs naming a model (<model>: a hash of its name); durable pull
                       consumer "model-<model>", shared by the workers that announce that model
    N.results.<job>    stream N-results (work queue): JobDone / JobFailed / JobCancelled, durable pull
                       consumer "bot"; a result waits there while the bot is down
    N.events.<job>     core NATS (lossy, never stored): JobStarted, JobProgress with previews
    N.workers          core NATS: worker heartbeats (a WorkerReady body; headers carry the slots)
    N.ping             core NATS: the bot asks every worker to send a heartbeat now
    N.cancel           core NATS: Cancel, heard by every worker; the one holding the job stops it
    bucket N-blobs     object store for bodies over the server's message limit (init images, PNGs)

Who creates what: both sides call :meth:`Layout.ensure` (idempotent), so start order does not matter. The
bot passes its lease and so owns ``ack_wait``; a worker only creates the consumer when it is missing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.api import StreamConfig
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "imagine"
DEFAULT_LEASE_SECONDS = 30.0
DUPLICATE_WINDOW_SECONDS = 600.0  # a bot restarted within this re-publishes its running jobs harmlessly
RESULTS_MAX_AGE_SECONDS = 7 * 24 * 3600.0  # results and blobs nobody collects are dropped after a week
INLINE_HEADROOM = 16 * 1024  # room for headers and the subject within the server's max_payload

# The most an object-store body may hold: a job's 16 PNGs of the largest size (about 12 MiB each for 4 Mpx
# of noise) fit. A bigger object is refused before it is read, so nobody who can write to the bucket makes
# the bot or a worker hold gigabytes.
MAX_OBJECT_BYTES = 256 * 1024 * 1024

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_OBJECT = "Imagine-Object"  # the body is in the object store under this name

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OBJECT_NAME_RE = re.compile(r"(requests|results)/[^\x00-\x1f\x7f]{1,300}")
_STREAM_EXISTS_DIFFERENT = 10058


class BlobError(ValueError):
    """A message names an object that cannot be read: gone, a link, or over :data:`MAX_OBJECT_BYTES`."""


class _CappedBuffer:
    """Where nats-py writes an object's chunks: stops at ``cap`` bytes even if the object's metadata lied
    about its size (and avoids nats-py's ``bytes +=`` per chunk, quadratic for large objects)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise BlobError(f"object over {self.cap} bytes")
        self.chunks.append(bytes(data))
        return len(data)


@dataclass(frozen=True, slots=True)
class Layout:
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        # The namespace becomes a subject token, stream names and a bucket name: keep it to safe characters.
        if not _NAMESPACE_RE.fullmatch(self.namespace):
            raise ValueError(f"NATS namespace must be 1-64 of A-Z a-z 0-9 _ -, got {self.namespace!r}")

    @property
    def jobs_stream(self) -> str:
        return f"{self.namespace}-jobs"

    @property
    def jobs_subject(self) -> str:
        return f"{self.namespace}.jobs"

    workers_consumer = "workers"
    results_consumer = "bot"

    def jobs_subject_for(self, model: str | None) -> str:
        """Where a job for ``model`` is queued: only workers that announce the model pull from there."""
        return f"{self.jobs_subject}.m.{model_token(model)}" if model else self.jobs_subject

    @staticmethod
    def job_consumer(model: str | None) -> str:
        return f"model-{model_token(model)}" if model else Layout.workers_consumer

    @property
    def results_stream(self) -> str:
        return f"{self.namespace}-results"

    def results_subject(self, job_id: str) -> str:
        return f"{self.namespace}.results.{_token(job_id)}"

    @property
    def results_filter(self) -> str:
        return f"{self.namespace}.results.*"

    def events_subject(self, job_id: str) -> str:
        return f"{self.namespace}.events.{_token(job_id)}"

    @property
    def events_filter(self) -> str:
        return f"{self.namespace}.events.*"

    @property
    def heartbeat_subject(self) -> str:
        return f"{self.namespace}.workers"

    @property
    def ping_subject(self) -> str:
        return f"{self.namespace}.ping"

    @property
    def cancel_subject(self) -> str:
        return f"{self.namespace}.cancel"

    @property
    def bucket(self) -> str:
        return f"{self.namespace}-blobs"

    # ----------------------------------------------------------------------------------------- setup

    async def ensure(self, js: JetStreamContext, lease: float | None = None) -> ObjectStore:
        """Create the streams, the workers' consumer and the blob bucket where missing; returns the bucket.

        ``lease`` (the bot's) sets the consumer's ack_wait even when it exists; ``None`` (a worker) keeps
        whatever is there, or creates it with the default lease.
        """
        from nats.js.api import (
            ObjectStoreConfig,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import BucketNotFoundError

        await _add_stream(
            js,
            StreamConfig(
                name=self.jobs_stream,
                subjects=[self.jobs_subject, f"{self.jobs_subject}.m.*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,  # queued jobs survive a broker restart
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            ),
        )
        await _add_stream(
            js,
            StreamConfig(
                name=self.results_stream,
                subjects=[self.results_filter],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,  # a job run twice is reported once
                max_age=RESULTS_MAX_AGE_SECONDS,
            ),
        )
        await self.ensure_job_consumer(js, None, lease)
        try:
            return await js.object_store(self.bucket)
        except BucketNotFoundError:
            pass
        return await js.create_object_store(
            self.bucket,
            config=ObjectStoreConfig(ttl=RESULTS_MAX_AGE_SECONDS, storage=StorageType.FILE),
        )

    async def ensure_job_consumer(self, js: JetStreamContext, model: str | None, lease: float | None) -> None:
        """The shared consumer of the jobs for ``model`` (None: naming no model), created where missing.
        ``lease`` (the bot's) sets its ack_wait even when it exists; ``None`` (a worker) keeps it."""
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        name, subject = self.job_consumer(model), self.jobs_subject_for(model)
        existing = None
        try:
            existing = await js.consumer_info(self.jobs_stream, name)
        except NotFoundError:
            pass
        if (
            existing is None
            or existing.config.filter_subject != subject
            or (lease is not None and existing.config.ack_wait != lease)
        ):
            # Creating a durable consumer that exists updates its settings (the lease; the filter of a
            # "workers" consumer from before jobs were routed by model).
            kept = existing.config.ack_wait if existing is not None else None
            await js.add_consumer(
                self.jobs_stream,
                ConsumerConfig(
                    name=name,
                    durable_name=name,
                    filter_subject=subject,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=lease or kept or DEFAULT_LEASE_SECONDS,
                    max_deliver=-1,  # workers fail a job that keeps killing them (see nats_worker)
                    max_ack_pending=-1,
                ),
            )

    async def bind_jobs(
        self, js: JetStreamContext, models: Iterable[str]
    ) -> list[JetStreamContext.PullSubscription]:
        """A worker's pull subscriptions: the jobs naming no model, and those of each model it serves."""
        subs = []
        for model in [None, *models]:
            await self.ensure_job_consumer(js, model, None)
            subs.append(
                await js.pull_subscribe_bind(durable=self.job_consumer(model), stream=self.jobs_stream)
            )
        return subs

    async def lease(self, js: JetStreamContext) -> float:
        """The workers' consumer's current ack_wait in seconds."""
        info = await js.consumer_info(self.jobs_stream, self.workers_consumer)
        return float(info.config.ack_wait or DEFAULT_LEASE_SECONDS)


def inline_limit(nc: Client) -> int:
    """The largest body sent inline; larger ones go through the object store."""
    return max(1024, nc.max_payload - INLINE_HEADROOM)


async def pack(store: ObjectStore, name: str, body: bytes, limit: int, headers: dict[str, str]) -> bytes:
    """``body`` as sent: itself, or empty with ``headers`` naming the object it was put in. Raises
    :class:`BlobError` for a body over :data:`MAX_OBJECT_BYTES`: the other side would refuse it."""
    if len(body) > MAX_OBJECT_BYTES:
        raise BlobError(f"a body of {len(body)} bytes is over the object limit ({MAX_OBJECT_BYTES})")
    if len(body) <= limit:
        return body
    await store.put(name, body)
    headers[HEADER_OBJECT] = name
    return b""


async def unpack(
    store: ObjectStore, data: bytes, headers: dict[str, str] | None, cap: int = MAX_OBJECT_BYTES
) -> tuple[bytes, str | None]:
    """The body of a received message and the object it came from (None: it was inline). Raises
    :class:`BlobError` for an object that is not one this layout writes, a link (it could point into any
    bucket), or one over ``cap`` bytes."""
    name = (headers or {}).get(HEADER_OBJECT)
    if not name:
        return data, None
    if not _OBJECT_NAME_RE.fullmatch(name):
        raise BlobError(f"object name {name[:80]!r} is not one of ours")
    info = await store.get_info(name)
    if info.is_link():
        raise BlobError(f"object {name} is a link")
    if (info.size or 0) > cap:
        raise BlobError(f"object {name} holds {info.size} bytes; {cap} at most")
    buffer = _CappedBuffer(cap)
    await store.get(name, writeinto=buffer)  # type: ignore[arg-type]  # nats-py wants a BufferedIOBase; uses write()
    return b"".join(buffer.chunks), name


async def _add_stream(js: JetStreamContext, config: StreamConfig) -> None:
    from nats.js.errors import BadRequestError

    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS_DIFFERENT:
            raise
        # An operator may have tuned it (replicas, limits): use it as it is, with the subjects it needs (a
        # stream from before jobs were routed by model lacks N.jobs.m.*).
        info = await js.stream_info(config.name or "")
        missing = [s for s in config.subjects or [] if s not in (info.config.subjects or [])]
        if missing:
            info.config.subjects = [*(info.config.subjects or []), *missing]
            await js.update_stream(info.config)
            log.info("NATS stream %s now also holds %s", config.name, ", ".join(missing))
        else:
            log.warning("NATS stream %s exists with other settings; using it as it is", config.name)


def model_token(model: str) -> str:
    """A model name as one subject token and consumer name: any name, fixed length, the same everywhere."""
    return hashlib.sha256(model.encode()).hexdigest()[:24]


def _token(job_id: str) -> str:
    # Job ids are uuid hex; anything else must still be one subject token.
    return re.sub(r"[^A-Za-z0-9_-]", "_", job_id) or "_"
