"""The bot ⇄ engine interface: submit, cancel, and one stream of events. Transports only carry;
the JobManager decides order and admission."""

from __future__ import annotations

from collections.abc import AsyncIterator
from enum import Enum
from typing import Protocol

from engine.protocol import Event, GenerateRequest


class Closed(Enum):
    """What a transport's close() puts on its event queue, after every event: the end of events()."""

    CLOSED = "closed"


class NoRoom(RuntimeError):
    """Raised by :meth:`Transport.submit` when no worker has room any more: one stopped after
    :meth:`Transport.free_slots` said there was room (the manager awaits its database in between), or the
    worker chosen was found gone when the job was sent. The job did not reach a worker; the manager puts it
    back in line without counting the attempt."""


class Transport(Protocol):
    async def start(self) -> None:
        """Start workers or connect; returns once jobs can be submitted."""

    def free_slots(self) -> int:
        """How much more work the workers can take right now, in the transport's own unit (images for
        the local transport); the manager dispatches the next job while this is above zero."""

    def accepts(self, model: str | None) -> bool:
        """Whether a job for ``model`` (None: the workers' default) can be submitted now: some worker that
        has the model has room. The manager then submits the first such job in its fair order."""

    def worker_count(self) -> int:
        """Workers ready now (for wait estimates: the queue drains this many jobs at a time)."""

    async def submit(self, request: GenerateRequest) -> None:
        """Send a job to a worker. Raises :class:`NoRoom` if none can take it now; a worker lost after
        this returns is reported as a retryable :class:`~engine.protocol.JobFailed`."""

    async def cancel(self, job_id: str) -> None: ...

    def events(self) -> AsyncIterator[Event]:
        """Every event from every worker, in arrival order, until :meth:`close`."""

    async def close(self) -> None: ...
