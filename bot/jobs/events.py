"""What the JobManager tells the Discord side. Cogs turn these into messages; they hold no rules."""

from __future__ import annotations

from dataclasses import dataclass

from bot.db.models import Job


@dataclass(frozen=True, slots=True)
class JobQueued:
    job: Job
    position: int
    eta_seconds: float | None


@dataclass(frozen=True, slots=True)
class JobStarted:
    job: Job


@dataclass(frozen=True, slots=True)
class JobProgress:
    job_id: str
    step: int
    total: int
    preview: bytes | None


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A job reached done, failed or cancelled (``job.state`` says which; ``job.error`` says why).

    Also sent at start for finished jobs that were never delivered; the receiver posts the result
    and calls ``JobManager.mark_delivered``.
    """

    job: Job


ManagerEvent = JobQueued | JobStarted | JobProgress | JobFinished
