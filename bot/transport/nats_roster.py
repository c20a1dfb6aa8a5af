"""The bot's view of the NATS workers: who announced itself, with how many slots, and who fell silent.

A plain class fed with heartbeats (engine/nats_heartbeat.py) and asked about capacity; no broker, no
tasks, its clock injectable, so its rules are tested on their own (tests/bot/transport/test_nats_roster.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.nats_heartbeat import Heartbeat
from engine.protocol import WorkerReady

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3  # a worker silent for this many of its heartbeat intervals is gone
MAX_WORKERS = 1000  # heartbeats from more distinct worker ids are ignored: the roster's memory is bounded


@dataclass(slots=True)
class Seen:
    ready: WorkerReady
    slots: int
    interval: float
    last_seen: float
    models: frozenset[str] = frozenset()  # the model names it runs jobs for (any worker: jobs naming none)

    def expired(self, now: float) -> bool:
        return now - self.last_seen > MISSED_HEARTBEATS * self.interval + 1.0


class WorkerRoster:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_workers: int = MAX_WORKERS) -> None:
        self._clock = clock
        self._max_workers = max_workers
        self._workers: dict[str, Seen] = {}
        self._full_warned = False

    def heard(self, beat: Heartbeat) -> bool:
        """Record a heartbeat; True when the worker is new or its slots changed (there may be room now)."""
        worker_id = beat.ready.worker_id
        if beat.leaving:
            if self._workers.pop(worker_id, None) is not None:
                log.info("engine worker %s is leaving", worker_id)
            return False
        previous = self._workers.get(worker_id)
        if previous is None:
            self.live()  # forget the silent ones first: they must not keep a newcomer out
            if len(self._workers) >= self._max_workers:
                if not self._full_warned:
                    log.warning("%d NATS workers announced; ignoring more", self._max_workers)
                    self._full_warned = True
                return False
        self._workers[worker_id] = Seen(beat.ready, beat.slots, beat.interval, self._clock(), beat.models)
        if previous is not None and (previous.slots, previous.models) == (beat.slots, beat.models):
            return False
        log.info(
            "engine worker %s ready: %s on %s, %d slot(s), %d model(s) by name",
            worker_id,
            beat.ready.model,
            beat.ready.device,
            beat.slots,
            len(beat.models),
        )
        return True

    def live(self) -> list[Seen]:
        """The workers heard from lately; the silent ones are dropped (and logged) here."""
        now = self._clock()
        for worker_id, seen in list(self._workers.items()):
            if seen.expired(now):
                log.warning("engine worker %s stopped sending heartbeats; counting it gone", worker_id)
                del self._workers[worker_id]
        return list(self._workers.values())

    def slots(self, model: str | None = None) -> int:
        """Images the live workers can hold together; with ``model``, those that announce it."""
        return sum(seen.slots for seen in self.live() if model is None or model in seen.models)
