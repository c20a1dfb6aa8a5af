"""The fair queue: priority tiers, and round-robin across users inside a tier.

One user's ten jobs do not starve the others: each pass takes one job per user in turn. Jobs of a user
keep their own order. Pure data structure, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuedJob:
    job_id: str
    user_id: int
    priority: int = 0
    images: int = 1


class FairQueue:
    def __init__(self) -> None:
        # priority -> user -> that user's jobs; the OrderedDict order is the round-robin turn order.
        self._tiers: dict[int, OrderedDict[int, deque[QueuedJob]]] = {}
        self._index: dict[str, QueuedJob] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._index

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._index:
            return  # idempotent: a job recovered twice is queued once
        tier = self._tiers.setdefault(job.priority, OrderedDict())
        tier.setdefault(job.user_id, deque()).append(job)
        self._index[job.job_id] = job

    def pop(self) -> QueuedJob | None:
        for priority in sorted(self._tiers, reverse=True):
            tier = self._tiers[priority]
            if not tier:
                continue
            user_id, jobs = next(iter(tier.items()))
            job = jobs.popleft()
            del tier[user_id]
            if jobs:
                tier[user_id] = jobs  # back of the line for this user's next job
            if not tier:
                del self._tiers[priority]
            del self._index[job.job_id]
            return job
        return None

    def remove(self, job_id: str) -> QueuedJob | None:
        job = self._index.pop(job_id, None)
        if job is None:
            return None
        tier = self._tiers[job.priority]
        jobs = tier[job.user_id]
        jobs.remove(job)
        if not jobs:
            del tier[job.user_id]
        if not tier:
            del self._tiers[job.priority]
        return job

    def order(self) -> list[QueuedJob]:
        """Every queued job in the order :meth:`pop` would hand them out."""
        out: list[QueuedJob] = []
        for priority in sorted(self._tiers, reverse=True):
            lanes = [list(jobs) for jobs in self._tiers[priority].values()]
            depth = max((len(lane) for lane in lanes), default=0)
            for i in range(depth):
                out.extend(lane[i] for lane in lanes if i < len(lane))
        return out

    def position(self, job_id: str) -> int | None:
        """1-based place in line, or None when the job is not queued."""
        for i, job in enumerate(self.order(), start=1):
            if job.job_id == job_id:
                return i
        return None

    def count_for(self, user_id: int) -> int:
        return sum(1 for job in self._index.values() if job.user_id == user_id)
