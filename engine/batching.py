"""Which images run together: the batch-planning rule shared by the real Runner and the load-simulation
runner (so benchmarks with simulated workers batch exactly like real ones). Torch-free."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.jobs import Job


def plan_batch(jobs: Iterable[Job], max_batch: int) -> list[tuple[Job, list[int]]]:
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
