"""The fair queue: guilds take turns, then users inside a guild, with priority deciding only inside a guild.

Each pass serves the next guild in line (direct messages together count as one more guild), and inside
that guild its highest priority tier, and inside the tier the next user in line. So one guild's admin who
gives a role priority 10 moves that role ahead of the rest of that guild, never ahead of another guild's
turn; and one user's ten jobs do not starve the others. Jobs of a user keep their own order. Pure data
structure, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuedJob:
    job_id: str
    user_id: int
    priority: int = 0
    images: int = 1
    guild_id: int | None = None  # None: a direct message
    model: str | None = None  # the model it names (None: the workers' default)


# user -> that user's jobs; the OrderedDict order is the round-robin turn order.
_Users = OrderedDict[int, deque[QueuedJob]]
# guild -> priority -> users; the outer OrderedDict order is the guilds' turn order.
_Guilds = OrderedDict[int | None, dict[int, _Users]]


def _head(guilds: _Guilds) -> QueuedJob | None:
    for tiers in guilds.values():  # the first guild in line; empty guilds and tiers are never kept
        users = tiers[max(tiers)]
        return next(iter(users.values()))[0]
    return None


def _detach(guilds: _Guilds, job: QueuedJob, *, turn_taken: bool) -> None:
    """Take ``job`` out; when ``turn_taken`` its guild and its user go to the back of their lines."""
    tiers = guilds[job.guild_id]
    users = tiers[job.priority]
    jobs = users[job.user_id]
    jobs.remove(job)  # the head, when the job is dispatched: O(1)
    if turn_taken or not jobs:
        del users[job.user_id]
        if jobs:
            users[job.user_id] = jobs
    if not users:
        del tiers[job.priority]
    if turn_taken or not tiers:
        del guilds[job.guild_id]
        if tiers:
            guilds[job.guild_id] = tiers


class FairQueue:
    def __init__(self) -> None:
        self._guilds: _Guilds = OrderedDict()
        self._index: dict[str, QueuedJob] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._index

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._index:
            return  # idempotent: a job recovered twice is queued once
        tiers = self._guilds.setdefault(job.guild_id, {})
        tiers.setdefault(job.priority, OrderedDict()).setdefault(job.user_id, deque()).append(job)
        self._index[job.job_id] = job

    def peek(self) -> QueuedJob | None:
        """The job :meth:`pop` would hand out, left in the queue."""
        return _head(self._guilds)

    def first(self, runnable: Callable[[QueuedJob], bool]) -> QueuedJob | None:
        """The first job in :meth:`pop`'s order that ``runnable`` accepts (a worker has its model): a job
        whose model no worker has room for waits, without holding up the jobs behind it."""
        head = self.peek()
        if head is None or runnable(head):
            return head
        return next((job for job in self.order() if runnable(job)), None)

    def take(self, job_id: str) -> QueuedJob | None:
        """Hand out ``job_id`` (normally :meth:`peek`'s): its guild and user go to the back of the line.

        The manager peeks, records the start in the database, and only then takes: a database error in
        between leaves the job where it was."""
        job = self._index.pop(job_id, None)
        if job is not None:
            _detach(self._guilds, job, turn_taken=True)
        return job

    def pop(self) -> QueuedJob | None:
        job = self.peek()
        return None if job is None else self.take(job.job_id)

    def remove(self, job_id: str) -> QueuedJob | None:
        """Drop a job (cancelled, finished elsewhere) without moving anyone's turn."""
        job = self._index.pop(job_id, None)
        if job is not None:
            _detach(self._guilds, job, turn_taken=False)
        return job

    def order(self) -> list[QueuedJob]:
        """Every queued job in the order :meth:`pop` would hand them out."""
        guilds: _Guilds = OrderedDict(
            (
                guild,
                {p: OrderedDict((u, deque(jobs)) for u, jobs in users.items()) for p, users in tiers.items()},
            )
            for guild, tiers in self._guilds.items()
        )
        out: list[QueuedJob] = []
        while (job := _head(guilds)) is not None:
            out.append(job)
            _detach(guilds, job, turn_taken=True)
        return out

    def position(self, job_id: str) -> int | None:
        """1-based place in line, or None when the job is not queued."""
        if job_id not in self._index:
            return None
        for i, job in enumerate(self.order(), start=1):
            if job.job_id == job_id:
                return i
        return None

    def count_for(self, user_id: int) -> int:
        return sum(1 for job in self._index.values() if job.user_id == user_id)
