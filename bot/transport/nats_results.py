"""The bot's side of the ``N.results.*`` stream: its durable consumer, and reading each result once.

A result is handed on with its message and body object; the transport's event loop acks the message and
deletes the object only after the JobManager has handled the event, so results finished while the bot was
down are delivered at its next start. Results are read one at a time, the message kept "in progress" while
the JobManager is slow, so none waits unacked past its ack_wait. A result that does not decode, or is not
its subject's job's result, is dropped (``term``): nothing in it is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.nats_layout import Layout, unpack
from engine.protocol import Event, JobCancelled, JobDone, JobFailed, decode

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger(__name__)

RESULTS_ACK_WAIT = 30.0  # extended while the JobManager saves a result's images; acked after that


@dataclass(slots=True)
class QueuedEvent:
    """An event in the transport's queue, with what to do once the JobManager has handled it."""

    event: Event
    msg: Msg | None = None  # a result to ack once the JobManager handled it
    object_name: str | None = None  # its body in the object store, deleted after the ack
    handled: asyncio.Event | None = None


class ResultReader:
    """Reads results for one namespace's bot until ``closing`` is set."""

    def __init__(self, layout: Layout, closing: asyncio.Event) -> None:
        self.layout = layout
        self._closing = closing

    async def ensure_consumer(self, js: JetStreamContext) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        # Made afresh at each start: results a killed bot had fetched but not acked come back now rather
        # than after their ack_wait. One bot per namespace, so nobody else is reading from it; on a
        # work-queue stream the unacked results stay stored while the consumer is gone.
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.layout.results_stream, self.layout.results_consumer)
        await js.add_consumer(
            self.layout.results_stream,
            ConsumerConfig(
                name=self.layout.results_consumer,
                durable_name=self.layout.results_consumer,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=RESULTS_ACK_WAIT,
                max_deliver=-1,
            ),
        )

    async def read(
        self, js: JetStreamContext, store: ObjectStore, on_result: Callable[[str, QueuedEvent], None]
    ) -> None:
        """Hand each result to ``on_result`` (its job id, its queue item), the next once it is handled."""
        psub = await js.pull_subscribe_bind(
            durable=self.layout.results_consumer, stream=self.layout.results_stream
        )
        while not self._closing.is_set():
            try:
                msgs = await psub.fetch(1, timeout=5)
            except TimeoutError:
                continue
            except Exception as exc:
                log.warning("reading results from NATS failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                result = await self._result_item(store, msg)
                if result is None:
                    continue
                job_id, item = result
                on_result(job_id, item)
                # One result at a time: the next is fetched once this one is handled and acked, so none
                # waits unacked past its ack_wait while the JobManager is busy.
                assert item.handled is not None
                while True:
                    try:
                        await asyncio.wait_for(item.handled.wait(), RESULTS_ACK_WAIT / 3)
                        break
                    except TimeoutError:  # the JobManager is slow (large images): keep the result ours
                        with contextlib.suppress(Exception):
                            await msg.in_progress()

    async def _result_item(self, store: ObjectStore, msg: Msg) -> tuple[str, QueuedEvent] | None:
        """The result's job id and its queue item; None for a result dropped as unreadable or not ours."""
        try:
            body, object_name = await unpack(store, msg.data, msg.headers)
            event = decode(body)
        except Exception as exc:
            # A result body already collected and deleted (a duplicate delivery) or garbage: never useful.
            log.warning("unreadable result on %s dropped: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return None
        if not isinstance(event, JobDone | JobFailed | JobCancelled) or not self._own_result(
            msg, event, object_name
        ):
            log.warning("result on %s that is not a result of its job dropped", msg.subject)
            with contextlib.suppress(Exception):
                await msg.term()
            return None
        return event.job_id, QueuedEvent(event, msg, object_name, asyncio.Event())

    def _own_result(
        self, msg: Msg, event: JobDone | JobFailed | JobCancelled, object_name: str | None
    ) -> bool:
        """The result names the job of its subject, and its body is that job's result object (the object is
        deleted once handled: it must not be another job's request)."""
        if msg.subject != self.layout.results_subject(event.job_id):
            return False
        return object_name is None or object_name.startswith(f"results/{event.job_id}/")
