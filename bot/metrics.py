"""The bot's Prometheus metrics, in a registry of its own (never prometheus-client's global one, so two bots
in one process, as in the tests, never collide).

Counters and histograms follow the JobManager's events (``JobManager.subscribe``); what is true *now* (the
queue per guild, jobs queued and running, engine workers, the gateway) is read when Prometheus scrapes.
Labels are ids and enum values, never text a member wrote, and no secret is ever a label.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.db.models import Job, JobState, utcnow
from bot.jobs.events import JobDispatched, JobFinished, ManagerEvent

if TYPE_CHECKING:
    from bot.jobs.manager import JobManager

# Seconds: a job waits from a blink to an evening's queue; a batch runs from a fraction of a second on an
# H200 to minutes on a CPU.
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ENGINE_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


def queued_age(job: Job, now: dt.datetime) -> float:
    return max(0.0, (now - _aware(job.created_at)).total_seconds()) if job.created_at else 0.0


class BotMetrics:
    """``observe`` is a JobManager listener; ``trace`` goes to discord.py's ``http_trace``."""

    jobs: JobManager  # set by follow()

    def __init__(self, gateway_up: Callable[[], bool]) -> None:
        self.gateway_up = gateway_up
        self.redelivery_backlog = 0  # refreshed from the database before each scrape (bot/health.py)
        self.registry = CollectorRegistry()
        r = self.registry
        self.finished = Counter(
            "imagine_jobs_finished",
            "Jobs that reached done, failed or cancelled",
            ["state", "kind"],
            registry=r,
        )
        self.images = Counter("imagine_images", "Pictures made (rate(): images per second)", registry=r)
        self.queue_wait = Histogram(
            "imagine_queue_wait_seconds", "From queued to sent to an engine", buckets=WAIT_BUCKETS, registry=r
        )
        self.engine_time = Histogram(
            "imagine_engine_seconds", "Engine time of each finished job", buckets=ENGINE_BUCKETS, registry=r
        )
        self.rest_errors = Counter(
            "imagine_discord_rest_errors",
            "Discord REST answers of 400 and up, by status",
            ["status"],
            registry=r,
        )
        self._guilds_seen: set[str] = set()  # so a drained guild shows 0, not nothing
        # JobFinished also re-announces, at start, results of an earlier run that were never delivered:
        # only jobs that finish from now on count.
        self._since = utcnow()

    def follow(self, jobs: JobManager) -> None:
        """Count ``jobs``' events, and show its queue and workers at each scrape."""
        self.jobs = jobs
        jobs.subscribe(self.observe)
        self.registry.register(_Now(self))

    async def observe(self, event: ManagerEvent) -> None:
        if isinstance(event, JobDispatched):
            self.queue_wait.observe(queued_age(event.job, utcnow()))
        elif isinstance(event, JobFinished) and _aware(event.job.finished_at or self._since) >= self._since:
            job = event.job
            self.finished.labels(job.state.value, job.kind.value).inc()
            if job.state is JobState.DONE:
                self.images.inc(len(job.images))
                if job.engine_seconds is not None:
                    self.engine_time.observe(job.engine_seconds)

    def trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace for discord.py's REST session: counts error answers by status."""
        config = aiohttp.TraceConfig()

        async def on_end(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            if params.response.status >= 400:
                self.rest_errors.labels(str(params.response.status)).inc()

        async def on_exception(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            self.rest_errors.labels("network").inc()  # no answer at all: refused, reset, timed out

        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_exception)
        return config

    def oldest_wait(self) -> float:
        """Seconds the oldest queued job has waited (0 with an empty queue)."""
        now = utcnow()
        queued = [j for j in self.jobs.active_jobs() if j.state is JobState.QUEUED]
        return max((queued_age(j, now) for j in queued), default=0.0)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    def now(self) -> Iterator[Metric]:
        active = self.jobs.active_jobs()
        by_state: Tally[tuple[str, str]] = Tally((j.state.value, j.kind.value) for j in active)
        gauge = GaugeMetricFamily(
            "imagine_jobs_active", "Jobs queued or running now", labels=["state", "kind"]
        )
        for (state, kind), n in sorted(by_state.items()):
            gauge.add_metric([state, kind], n)
        yield gauge
        depth: Tally[str] = Tally(_guild(j) for j in active if j.state is JobState.QUEUED)
        self._guilds_seen.update(depth)
        gauge = GaugeMetricFamily(
            "imagine_queue_depth", "Jobs waiting in the queue, per guild", labels=["guild"]
        )
        for guild in sorted(self._guilds_seen):
            gauge.add_metric([guild], depth.get(guild, 0))
        yield gauge
        yield GaugeMetricFamily(
            "imagine_queue_oldest_seconds",
            "How long the oldest queued job has waited",
            value=self.oldest_wait(),
        )
        yield GaugeMetricFamily(
            "imagine_engine_workers_alive",
            "Engine workers ready now",
            value=self.jobs.transport.worker_count(),
        )
        yield GaugeMetricFamily(
            "imagine_gateway_connected",
            "1 while the Discord gateway is connected",
            value=int(self.gateway_up()),
        )
        yield GaugeMetricFamily(
            "imagine_redelivery_backlog",
            "Finished results not yet on Discord (the redelivery sweep's work)",
            value=self.redelivery_backlog,
        )


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)  # SQLite keeps no zone


def _guild(job: Job) -> str:
    return str(job.guild_id) if job.guild_id is not None else "dm"


class _Now(Collector):
    def __init__(self, metrics: BotMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.now()
