"""What an ``engine serve`` worker sends back: results, durably on ``N.results.<job>``, and progress, best
effort on core NATS (engine/nats_worker.py decides when)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.nats_layout import HEADER_MSG_ID, BlobError, Layout, inline_limit, pack
from engine.protocol import JobCancelled, JobDone, JobFailed, JobProgress, JobStarted, encode

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger("engine.nats_worker")

RESULT_RETRY_SECONDS = 30.0  # then give up without acking: the job is redelivered and reported by another


class ResultPublisher:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        store: ObjectStore,
        layout: Layout,
        worker_id: str,
        inline_limit: int | None = None,
    ) -> None:
        self.nc, self.js, self.store, self.layout = nc, js, store, layout
        self.worker_id = worker_id
        self._inline_limit = inline_limit

    async def publish_result(
        self, event: JobDone | JobFailed | JobCancelled, give_up: Callable[[], bool]
    ) -> bool:
        """Publish a terminal event durably; False when the broker would not take it within
        :data:`RESULT_RETRY_SECONDS` or ``give_up()`` says so (the job is then not acked and comes back to the
        queue). A result too large for the bot to accept is replaced by a failure saying so."""
        job_id = event.job_id
        limit = self._inline_limit if self._inline_limit is not None else inline_limit(self.nc)
        deadline = asyncio.get_running_loop().time() + RESULT_RETRY_SECONDS
        while True:
            headers = {HEADER_MSG_ID: job_id}
            try:
                try:
                    name = f"results/{job_id}/{self.worker_id}"
                    data = await pack(self.store, name, encode(event), limit, headers)
                except BlobError as exc:
                    log.error("result of job %s not sent: %s", job_id, exc)
                    event = JobFailed(job_id, "the finished images are too large to send to the bot")
                    continue
                await self.js.publish(self.layout.results_subject(job_id), data, headers=headers)
                return True
            except Exception as exc:
                if give_up() or asyncio.get_running_loop().time() > deadline:
                    log.error("result of job %s not published (%s); it will run again elsewhere", job_id, exc)
                    return False
                log.warning("publishing the result of job %s failed (%s); retrying", job_id, exc)
                await asyncio.sleep(1)

    async def publish_live(self, event: JobStarted | JobProgress) -> None:
        body = encode(event)
        if len(body) > inline_limit(self.nc) and isinstance(event, JobProgress):
            body = encode(JobProgress(event.job_id, event.step, event.total))  # drop an oversized preview
        try:
            await self.nc.publish(self.layout.events_subject(event.job_id), body)
        except Exception as exc:  # progress is best effort
            log.debug("progress for %s not sent: %s", event.job_id, exc)
