"""Which images run together: the batch-planning rule shared by the real Runner and the load-simulation
runner (so benchmarks with simulated workers batch exactly like real ones). Torch-free."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Protocol, TypeVar


class _Request(Protocol):
    priority: int
    count: int


class Plannable(Protocol):
    request: _Request
    order: int
    next_index: int
    running: bool
    cancelled: bool
    finished: bool

    @property
    def remaining(self) -> int: ...

    @property
    def key(self) -> Hashable: ...


J = TypeVar("J", bound=Plannable)


def plan_batch(jobs: Iterable[J], max_batch: int) -> list[tuple[J, list[int]]]:
    """The next batch: the most urgent job's next images (at most ``max_batch``), then whole compatible
    jobs (same ``key``) in priority order while they fit. Marks the chosen images as handed out."""
    ready = sorted(
        (j for j in jobs if not j.finished and not j.cancelled and j.remaining > 0),
        key=lambda j: (-j.request.priority, j.order),
    )
    if not ready:
        return []
    head = ready[0]
    take = min(head.remaining, max_batch)
    batch = [(head, list(range(head.next_index, head.next_index + take)))]
    room = max_batch - take
    for job in ready[1:]:
        if room <= 0:
            break
        if job.key == head.key and job.remaining <= room:
            batch.append((job, list(range(job.next_index, job.request.count))))
            room -= job.remaining
    for job, indices in batch:
        job.next_index = indices[-1] + 1
        job.running = True
    return batch
