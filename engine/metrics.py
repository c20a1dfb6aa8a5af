"""A ``python -m engine serve`` worker's Prometheus metrics (``--metrics-port``): batch sizes and times,
denoising steps (``rate()``: steps per second), and GPU memory while CUDA is in use. Jobs by state are the
bot's metrics (bot/metrics.py), which sees every worker's.

The registry is the worker's own, served by prometheus-client's small threaded HTTP server. This module
imports no torch: GPU memory is read only when the runner has already loaded torch and CUDA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.protocol import Event, GenerateRequest, JobProgress

if TYPE_CHECKING:
    from engine.nats_serve import RunnerLike

GPU_MEMORY = "imagine_engine_gpu_memory_bytes"  # served only while CUDA is in use
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class WorkerMetrics:
    def __init__(self, device: str) -> None:
        self.registry = r = CollectorRegistry()
        self.batch_images = Histogram(
            "imagine_engine_batch_images", "Images in each batch run", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "imagine_engine_batch_seconds", "Time of each batch", buckets=SECONDS_BUCKETS, registry=r
        )
        self.steps = Counter(
            "imagine_engine_steps", "Denoising steps of batches (rate(): steps per second)", registry=r
        )
        self.image_steps = Counter(
            "imagine_engine_image_steps", "Denoising steps times the images they ran for", registry=r
        )
        r.register(_GpuMemory(device))

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) from a daemon thread; returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class _GpuMemory(Collector):
    def __init__(self, device: str) -> None:
        self.device = device

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        # Absent, not zero, without CUDA; and never the first CUDA call of the process (that would create
        # a context on a GPU this worker does not use).
        if torch is None or not self.device.startswith("cuda") or not torch.cuda.is_initialized():
            return
        gauge = GaugeMetricFamily(GPU_MEMORY, "GPU memory held by torch", labels=["device", "kind"])
        gauge.add_metric([self.device, "allocated"], torch.cuda.memory_allocated(self.device))
        gauge.add_metric([self.device, "reserved"], torch.cuda.memory_reserved(self.device))
        yield gauge


class MeteredRunner:
    """The worker's runner, counted: what ``run_batch`` ran. The rest is the runner's own."""

    def __init__(self, runner: RunnerLike, metrics: WorkerMetrics) -> None:
        self.runner, self.metrics = runner, metrics
        self.worker_id = runner.worker_id
        self.max_batch = runner.max_batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)  # whatever else a runner offers

    @property
    def model_name(self) -> str:
        return self.runner.model_name

    @property
    def device_name(self) -> str:
        return self.runner.device_name

    def prepare(self, request: GenerateRequest) -> Any:
        return self.runner.prepare(request)

    def plan(self, jobs: Iterable[Any]) -> list[tuple[Any, list[int]]]:
        return self.runner.plan(jobs)

    def run_batch(self, batch: Sequence[tuple[Any, list[int]]], emit: Callable[[Event], None]) -> None:
        images = sum(len(indices) for _, indices in batch)
        start = {job.request.job_id: max(0, job.last_step) for job, _ in batch}
        reached: dict[str, int] = {}

        def counted(event: Event) -> None:
            if isinstance(event, JobProgress) and event.job_id in start:
                reached[event.job_id] = max(reached.get(event.job_id, 0), event.step)
            emit(event)

        began = time.monotonic()
        try:
            self.runner.run_batch(batch, counted)
        finally:
            self.metrics.batch_seconds.observe(time.monotonic() - began)
            self.metrics.batch_images.observe(images)
            # The batch's steps: the furthest any of its jobs got (they step together).
            steps = max((step - start[job_id] for job_id, step in reached.items()), default=0)
            self.metrics.steps.inc(max(0, steps))
            self.metrics.image_steps.inc(max(0, steps) * images)

    def cancel(self, job: Any, emit: Callable[[Event], None]) -> bool:
        return self.runner.cancel(job, emit)

    def fail(self, job: Any, reason: str, emit: Callable[[Event], None], retryable: bool = False) -> bool:
        return self.runner.fail(job, reason, emit, retryable)

    def abort(self) -> None:
        self.runner.abort()

    def wait_idle(self, timeout: float | None = None) -> None:
        self.runner.wait_idle(timeout)

    def close(self) -> None:
        self.runner.close()
