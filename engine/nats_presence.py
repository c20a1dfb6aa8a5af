"""An ``engine serve`` worker's presence: heartbeats on ``N.workers`` (engine/nats_heartbeat.py), answers to
the bot's pings, and the lease of every job it holds kept alive (``msg.in_progress()``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from engine.nats_heartbeat import STATE_LEAVING, STATE_READY, heartbeat_message
from engine.nats_layout import Layout
from engine.protocol import WorkerReady

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from engine.nats_serve import RunnerLike

log = logging.getLogger("engine.nats_worker")


class _Worker(Protocol):
    runner: RunnerLike
    layout: Layout
    slots: int
    heartbeat_seconds: float
    models: tuple[str, ...]
    lease: float


class Presence:
    def __init__(self, worker: _Worker, nc: Client, js: JetStreamContext) -> None:
        self.worker, self.nc, self.js = worker, nc, js
        self._lease_check = asyncio.Event()  # re-read the lease now

    async def pinged(self, stopping: bool) -> None:
        self._lease_check.set()
        if not stopping:
            await self.send_heartbeat(STATE_READY)

    async def heartbeats(self, stopping: Callable[[], bool]) -> None:
        while True:
            await self.send_heartbeat(STATE_LEAVING if stopping() else STATE_READY)
            await asyncio.sleep(self.worker.heartbeat_seconds)

    async def send_heartbeat(self, state: str) -> None:
        runner = self.worker.runner
        ready = WorkerReady(
            worker_id=runner.worker_id,
            model=runner.model_name,
            device=runner.device_name,
            pid=os.getpid(),
            max_batch=runner.max_batch,
        )
        body, headers = heartbeat_message(
            ready, self.worker.slots, self.worker.heartbeat_seconds, state, self.worker.models
        )
        try:
            await self.nc.publish(self.worker.layout.heartbeat_subject, body, headers=headers)
            if state == STATE_LEAVING:
                await self.nc.flush(timeout=2)
        except Exception as exc:
            log.debug("heartbeat not sent: %s", exc)

    async def extend_leases(self, held: Callable[[], list[Msg]]) -> None:
        while True:
            try:
                self.worker.lease = await self.worker.layout.lease(self.js)  # the bot may have changed it
            except Exception as exc:
                log.debug("lease not read: %s", exc)
            for msg in held():
                try:
                    await msg.in_progress()
                except Exception as exc:  # connection gone, already acked: the lease then decides
                    log.debug("JetStream in-progress reply failed: %s", exc)
            # Every third of the lease (2 s at most), or at once when the bot pings: it pings after
            # setting the lease, so a lease it shortened is seen before it sends any job.
            self._lease_check.clear()
            wait = max(0.2, min(2.0, (self.worker.lease or 30.0) / 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_check.wait(), wait)
