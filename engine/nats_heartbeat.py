"""A worker's heartbeat on ``N.workers``: a WorkerReady body, with its slots, interval and state in headers.

Written by ``engine serve`` workers and read by the bot's roster (bot/transport/nats_roster.py). The bot
releases jobs while the announced slots have room, so a heartbeat is trusted only within bounds: a claim
of 10^9 slots would release the whole queue to one (possibly forged) worker, and an interval of 10^9
seconds would keep a dead worker counted for ever.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.bounds import MODEL_NAME_CHARS, Bound
from engine.protocol import ProtocolError, WorkerReady, decode, encode

HEADER_SLOTS = "Imagine-Slots"  # images the worker holds at most (two batches' worth)
HEADER_HEARTBEAT = "Imagine-Heartbeat"  # seconds between the worker's heartbeats
HEADER_STATE = "Imagine-State"  # "ready" or "leaving"
HEADER_MODELS = "Imagine-Models"  # JSON list of the model names the worker serves (jobs naming a model)

STATE_READY = "ready"
STATE_LEAVING = "leaving"

SLOTS = Bound(1, 256)  # images one worker may hold: 2 x a 128-image batch is beyond any GPU today
INTERVAL = Bound(0.1, 60.0)  # seconds between heartbeats; silent for 3 of them, a worker counts as gone
DEFAULT_INTERVAL = 2.0
MAX_MODELS = 256  # model names one worker may announce (and pull jobs for)
MODELS_HEADER_BYTES = MAX_MODELS * (MODEL_NAME_CHARS + 4)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ready: WorkerReady
    state: str
    slots: int
    interval: float
    # Models it runs jobs for by name; a job naming no model runs on any worker (with its own default).
    models: frozenset[str] = field(default_factory=frozenset)

    @property
    def leaving(self) -> bool:
        return self.state == STATE_LEAVING


def heartbeat_message(
    ready: WorkerReady, slots: int, interval: float, state: str, models: Iterable[str] = ()
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one heartbeat."""
    headers = {HEADER_SLOTS: str(slots), HEADER_HEARTBEAT: f"{interval:g}", HEADER_STATE: state}
    headers[HEADER_MODELS] = json.dumps(sorted(models), ensure_ascii=True)
    return encode(ready), headers


def read_models(raw: str | None) -> frozenset[str]:
    """The model names a heartbeat announces; :class:`ProtocolError` for anything but a bounded JSON list
    of model names."""
    if raw is None:
        return frozenset()
    if len(raw) > MODELS_HEADER_BYTES:
        raise ProtocolError(f"a heartbeat's model list is over {MODELS_HEADER_BYTES} bytes")
    try:
        names = json.loads(raw)
    except ValueError:
        raise ProtocolError("a heartbeat's model list is not JSON") from None
    if not isinstance(names, list) or len(names) > MAX_MODELS:
        raise ProtocolError(f"a heartbeat's models must be a list of at most {MAX_MODELS} names")
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= MODEL_NAME_CHARS or not name.isprintable():
            raise ProtocolError("a heartbeat announces a model name that is not one")
    return frozenset(names)


def read_heartbeat(data: bytes, headers: dict[str, str] | None) -> Heartbeat:
    """The heartbeat in a message on ``N.workers``; :class:`ProtocolError` when it is malformed or claims
    slots or an interval out of bounds."""
    ready = decode(data)
    if not isinstance(ready, WorkerReady):
        raise ProtocolError(f"a heartbeat holds a WorkerReady, not a {type(ready).__name__}")
    if not ready.worker_id:
        raise ProtocolError("a heartbeat without a worker id")
    headers = headers or {}
    state = headers.get(HEADER_STATE, STATE_READY)
    if state not in (STATE_READY, STATE_LEAVING):
        raise ProtocolError(f"unknown worker state {state[:20]!r}")
    raw_slots = headers.get(HEADER_SLOTS)
    raw_interval = headers.get(HEADER_HEARTBEAT)
    try:
        slots = int(raw_slots) if raw_slots is not None else 2 * ready.max_batch
        interval = float(raw_interval) if raw_interval is not None else DEFAULT_INTERVAL
    except ValueError:
        raise ProtocolError("heartbeat slots or interval is not a number") from None
    if slots not in SLOTS:
        raise ProtocolError(f"worker {ready.worker_id} claims {slots} slots; {SLOTS.lo}-{SLOTS.hi} allowed")
    if interval not in INTERVAL:  # NaN and inf are in no Bound
        raise ProtocolError(
            f"worker {ready.worker_id} beats every {interval:g} s; {INTERVAL.lo:g}-{INTERVAL.hi:g} s allowed"
        )
    return Heartbeat(ready, state, slots, interval, read_models(headers.get(HEADER_MODELS)))
