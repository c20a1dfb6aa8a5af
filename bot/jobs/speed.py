"""How fast the engine works, for the wait estimates in queue replies."""

from __future__ import annotations

from bot.db.models import Job
from engine.protocol import JobKind


class SpeedMeter:
    """Engine seconds per unit of work (one 512×512 image-step), smoothed, for queue wait estimates."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.seconds_per_unit: float | None = None

    @staticmethod
    def units(job: Job) -> float:
        steps = job.steps if job.kind == JobKind.TXT2IMG else max(1, int(job.steps * (job.strength or 1.0)))
        return max(1, steps) * job.count * (job.width * job.height) / (512 * 512)

    def record(self, job: Job, seconds: float) -> None:
        rate = seconds / self.units(job)
        prev = self.seconds_per_unit
        self.seconds_per_unit = rate if prev is None else prev + self.alpha * (rate - prev)

    def estimate(self, jobs: list[Job], workers: int) -> float | None:
        if self.seconds_per_unit is None:
            return None
        return sum(self.units(j) for j in jobs) * self.seconds_per_unit / max(1, workers)
