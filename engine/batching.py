"""Which images run together: the batch-planning rule shared by the real Runner and the load-simulation
runner (so benchmarks with simulated workers batch exactly like real ones). Torch-free."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.jobs import Job

# A job waiting for another model than the loaded one lets at most this many batches of the loaded model
# go first (jobs of the same priority only): switching models costs a load, waiting forever costs more.
MODEL_STICKY_BATCHES = 3


def plan_batch(
    jobs: Iterable[Job], max_batch: int, loaded_model: str | None = None
) -> list[tuple[Job, list[int]]]:
    """The next batch: the most urgent job's next images (at most ``max_batch``), then whole compatible
    jobs (same ``key``) in priority order while they fit. Marks the chosen images as handed out.

    The most urgent job is the first by priority, then arrival; but while ``loaded_model`` (a
    ``ModelSource.key``) has jobs of that same priority, they go first, unless the first job has already
    been passed over :data:`MODEL_STICKY_BATCHES` times."""
    ready = sorted(
        (j for j in jobs if not j.finished and not j.cancelled and j.remaining > 0),
        key=lambda j: (-j.request.priority, j.order),
    )
    if not ready:
        return []
    head = ready[0]
    if loaded_model is not None and head.key.model != loaded_model:
        same_model = next(
            (j for j in ready if j.key.model == loaded_model and j.request.priority == head.request.priority),
            None,
        )
        if same_model is not None and head.passed_over < MODEL_STICKY_BATCHES:
            head.passed_over += 1
            head = same_model
    take = min(head.remaining, max_batch)
    batch = [(head, list(range(head.next_index, head.next_index + take)))]
    room = max_batch - take
    for job in ready:
        if room <= 0:
            break
        if job is not head and job.key == head.key and job.remaining <= room:
            batch.append((job, list(range(job.next_index, job.request.count))))
            room -= job.remaining
    for job, indices in batch:
        job.next_index = indices[-1] + 1
        job.running = True
    return batch
