"""What a NATS worker receives from the broker and how it answers: the job request a work-queue message
carries, cancels (remembered for jobs the worker does not hold yet), and acks. Nothing from the broker is
trusted: a message that is not exactly what it claims raises ProtocolError (or is ignored, for a cancel)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from engine.nats_layout import HEADER_MSG_ID, unpack
from engine.protocol import Cancel, GenerateRequest, ProtocolError, Submit, decode
from engine.wire_checks import JOB_ID_RE

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.object_store import ObjectStore

log = logging.getLogger(__name__)

REMEMBER_CANCELS = 10_000  # cancels for jobs this worker does not hold (yet), newest kept


def job_id_of(headers: Mapping[str, str] | None) -> str:
    """The job id a message's Nats-Msg-Id header names; "" when it is not an id the bot makes (then
    there is nobody to report a failure to)."""
    job_id = (headers or {}).get(HEADER_MSG_ID, "")
    return job_id if JOB_ID_RE.fullmatch(job_id) else ""


async def read_submit(store: ObjectStore, msg: Msg, job_id: str) -> GenerateRequest:
    """The request a work-queue message carries (its body inline or in the object store); ProtocolError
    unless it is a Submit for exactly ``job_id``."""
    body, _ = await unpack(store, msg.data, msg.headers)
    message = decode(body)
    if not isinstance(message, Submit):
        raise ProtocolError(f"expected Submit, got {type(message).__name__}")
    if message.request.job_id != job_id:
        raise ProtocolError("the job's id is not the one in its Nats-Msg-Id header")
    return message.request


def cancelled_job(data: bytes) -> str | None:
    """The job a cancel message names; None for anything else (ignored, not an error)."""
    try:
        message = decode(data)
    except ProtocolError:
        return None
    return message.job_id if isinstance(message, Cancel) else None


class CancelMemory:
    """Cancels for jobs not held yet, bounded: the oldest are forgotten first."""

    def __init__(self, limit: int = REMEMBER_CANCELS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def remember(self, job_id: str) -> None:
        self._ids[job_id] = None
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids


async def quietly(action: Awaitable[Any]) -> None:
    """Await an ack/nak/term; a failure (connection gone, already acked) is only logged: the lease then
    decides."""
    try:
        await action
    except Exception as exc:
        log.debug("JetStream ack-type reply failed: %s", exc)
