"""The bot's roster of NATS workers and the bounds on what a heartbeat may claim, without a broker."""

from __future__ import annotations

import pytest

from bot.transport.nats_roster import MISSED_HEARTBEATS, WorkerRoster
from engine.nats_heartbeat import (
    HEADER_HEARTBEAT,
    HEADER_SLOTS,
    HEADER_STATE,
    SLOTS,
    STATE_LEAVING,
    STATE_READY,
    Heartbeat,
    heartbeat_message,
    read_heartbeat,
)
from engine.protocol import Cancel, ProtocolError, WorkerReady, encode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(worker_id: str, slots: int = 2, interval: float = 1.0, state: str = STATE_READY) -> Heartbeat:
    body, headers = heartbeat_message(WorkerReady(worker_id, "m", "cpu", 1), slots, interval, state)
    return read_heartbeat(body, headers)


def test_capacity_is_the_sum_of_live_workers_slots():
    clock = Clock()
    roster = WorkerRoster(clock)
    assert roster.heard(beat("a", 2)) is True  # new: the manager may dispatch
    assert roster.heard(beat("b", 4)) is True
    assert roster.heard(beat("a", 2)) is False  # nothing changed
    assert roster.heard(beat("a", 3)) is True  # more room
    assert roster.slots() == 7 and len(roster.live()) == 2


def test_a_silent_worker_is_dropped_after_its_missed_heartbeats():
    clock = Clock()
    roster = WorkerRoster(clock)
    roster.heard(beat("fast", 2, interval=1.0))
    roster.heard(beat("slow", 2, interval=10.0))
    clock.now += MISSED_HEARTBEATS * 1.0 + 1.5
    assert [seen.ready.worker_id for seen in roster.live()] == ["slow"]
    clock.now += MISSED_HEARTBEATS * 10.0
    assert roster.live() == [] and roster.slots() == 0


def test_a_leaving_worker_is_gone_at_once():
    roster = WorkerRoster(Clock())
    roster.heard(beat("a"))
    assert roster.heard(beat("a", state=STATE_LEAVING)) is False
    assert roster.slots() == 0


def test_the_roster_holds_a_bounded_number_of_workers():
    clock = Clock()
    roster = WorkerRoster(clock, max_workers=3)
    for i in range(10):
        roster.heard(beat(f"w{i}", 1))
    assert roster.slots() == 3  # the rest were ignored
    clock.now += 60  # the three fall silent: newcomers are heard again
    assert roster.heard(beat("late", 1)) is True and roster.slots() == 1


def ready_body(worker_id: str = "w") -> bytes:
    return encode(WorkerReady(worker_id, "m", "cpu", 1, max_batch=2))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({HEADER_SLOTS: "1000000000"}, "slots"),  # would release the whole queue to one worker
        ({HEADER_SLOTS: str(SLOTS.hi + 1)}, "slots"),
        ({HEADER_SLOTS: "0"}, "slots"),
        ({HEADER_SLOTS: "-5"}, "slots"),
        ({HEADER_SLOTS: "1e9"}, "not a number"),
        ({HEADER_HEARTBEAT: "1e9"}, "beats every"),  # would keep a dead worker counted for ever
        ({HEADER_HEARTBEAT: "nan"}, "beats every"),
        ({HEADER_HEARTBEAT: "inf"}, "beats every"),
        ({HEADER_HEARTBEAT: "0"}, "beats every"),
        ({HEADER_STATE: "busy"}, "state"),
    ],
)
def test_heartbeats_out_of_bounds_are_refused(headers, why):
    with pytest.raises(ProtocolError, match=why):
        read_heartbeat(ready_body(), headers)


def test_a_heartbeat_must_hold_a_named_worker():
    with pytest.raises(ProtocolError, match="WorkerReady"):
        read_heartbeat(encode(Cancel("j")), {})
    with pytest.raises(ProtocolError, match="worker id"):
        read_heartbeat(ready_body(""), {})


def test_a_heartbeat_without_headers_means_two_batches_every_two_seconds():
    heard = read_heartbeat(ready_body(), None)
    assert (heard.slots, heard.interval, heard.leaving) == (4, 2.0, False)
