"""What the JobManager tells the Discord side. Cogs turn these into messages; they hold no rules."""

from __future__ import annotations

from dataclasses import dataclass

from bot.db.models import Job
from engine.protocol import JobProgress  # the engine's own event, passed on as it is

__all__ = ["JobDispatched", "JobFinished", "JobProgress", "JobQueued", "ManagerEvent"]


@dataclass(frozen=True, slots=True)
class JobQueued:
    job: Job
    position: int
    eta_seconds: float | None


@dataclass(frozen=True, slots=True)
class JobDispatched:
    """The job left the queue for a worker (the engine's own ``JobStarted`` names no row)."""

    job: Job


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A job reached done, failed or cancelled (``job.state`` says which; ``job.error`` says why).

    Also sent at start for finished jobs that were never delivered; the receiver posts the result
    and calls ``JobManager.mark_delivered``.

    ``picture`` is what to post for a done job, when the engine's result came with it (its grid, or its one
    image): the receiver then neither reads the files back nor builds the grid. None: build it from the
    saved files (a redelivery, a result without a grid).
    """

    job: Job
    picture: bytes | None = None


ManagerEvent = JobQueued | JobDispatched | JobProgress | JobFinished
