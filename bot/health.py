"""The bot's HTTP port for operators (``METRICS_PORT``): ``/metrics`` for Prometheus and ``/healthz`` for
a supervisor or a load balancer.

``/healthz`` answers 200 when the bot can do its work, else 503; either way with a short JSON body saying
why. It fails while the Discord gateway is disconnected, while no engine worker is ready, and once the
oldest queued job has waited longer than ``HEALTH_MAX_WAIT``. The port is bound to 127.0.0.1 unless
``METRICS_HOST`` says otherwise: nothing here needs to be public.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.metrics import BotMetrics

log = logging.getLogger(__name__)

BACKLOG_QUERY_SECONDS = 5.0  # a scrape never hangs on a locked database: the last count is shown instead


def health(metrics: BotMetrics, max_wait: float) -> tuple[bool, dict[str, Any]]:
    """Whether the bot is healthy, and the facts that say so."""
    gateway = metrics.gateway_up()
    workers = metrics.jobs.transport.worker_count()
    oldest = metrics.oldest_wait()
    problems = []
    if not gateway:
        problems.append("the Discord gateway is disconnected")
    if workers == 0:
        problems.append("no engine worker is ready")
    if oldest > max_wait:
        problems.append(f"the oldest queued job has waited {oldest:.0f} s (HEALTH_MAX_WAIT={max_wait:g})")
    body = {
        "ok": not problems,
        "problems": problems,
        "gateway_connected": gateway,
        "engine_workers": workers,
        "oldest_queued_seconds": round(oldest, 1),
    }
    return not problems, body


class HealthServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: one the system picks; see :attr:`port`)."""

    def __init__(
        self,
        metrics: BotMetrics,
        backlog: Callable[[], Awaitable[int]],
        *,
        host: str,
        port: int,
        max_wait: float,
    ) -> None:
        self.metrics, self.backlog = metrics, backlog
        self.host, self.port, self.max_wait = host, port, max_wait
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    async def close(self) -> None:
        if self._runner.server is not None:  # started (a bot whose login failed never started it)
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            self.metrics.redelivery_backlog = await asyncio.wait_for(self.backlog(), BACKLOG_QUERY_SECONDS)
        except Exception as exc:  # a busy or failing database must not take the metrics down with it
            log.warning("metrics: could not count the redelivery backlog (%s)", type(exc).__name__)
        body = self.metrics.scrape()  # on the loop: it reads the JobManager's state, which the loop changes
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = health(self.metrics, self.max_wait)
        return web.json_response(body, status=200 if ok else 503)
