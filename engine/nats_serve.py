"""``python -m engine serve``: the command line of the NATS worker (engine/nats_worker.py).

Credentials come from the environment (``NATS_USER``/``NATS_PASSWORD``, ``NATS_TOKEN``, ``NATS_CREDS``) or
``--nats-creds FILE``, never from argv: a ``--nats`` URL holding a password is refused
(engine/nats_connect.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from engine.logging_setup import setup_engine_logging
from engine.nats_connect import NatsAuth, NatsConfigError, broker, has_secret
from engine.nats_heartbeat import DEFAULT_INTERVAL, INTERVAL, MAX_MODELS, SLOTS
from engine.nats_layout import DEFAULT_NAMESPACE
from engine.nats_worker import DEFAULT_MAX_DELIVERIES, NatsWorker
from engine.protocol import Event, GenerateRequest, WorkerReady
from engine.wire_checks import check_fields

log = logging.getLogger("engine.nats_worker")


class RunnerLike(Protocol):
    """What the worker needs from the engine's Runner (and from the load-simulation runner)."""

    worker_id: str
    max_batch: int

    @property
    def model_name(self) -> str: ...

    @property
    def device_name(self) -> str: ...

    def prepare(self, request: GenerateRequest) -> Any: ...

    def plan(self, jobs: Iterable[Any]) -> list[tuple[Any, list[int]]]: ...

    def run_batch(self, batch: Sequence[tuple[Any, list[int]]], emit: Callable[[Event], None]) -> None: ...

    def cancel(self, job: Any, emit: Callable[[Event], None]) -> bool: ...

    def fail(self, job: Any, reason: str, emit: Callable[[Event], None], retryable: bool = False) -> bool: ...

    def abort(self) -> None: ...

    def wait_idle(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's own flags (the model flags come from ``engine.__main__``)."""
    parser.add_argument(
        "--nats",
        default=None,
        metavar="URL",
        help="NATS server URL without credentials, e.g. tls://broker:4222 (default: NATS_URL)",
    )
    parser.add_argument(
        "--nats-creds",
        default=None,
        metavar="FILE",
        help="a .creds or nkey seed file (default: NATS_CREDS; or NATS_USER/NATS_PASSWORD, NATS_TOKEN)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("NATS_NAMESPACE") or DEFAULT_NAMESPACE,
        help=f"subject/stream prefix shared with the bot (default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument("--worker-id", default=os.environ.get("ENGINE_WORKER_ID") or None)
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help=f"images held, {SLOTS.lo}-{SLOTS.hi} (default: 2 x max batch)",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"{INTERVAL.lo:g}-{INTERVAL.hi:g} (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=DEFAULT_MAX_DELIVERIES,
        help="fail a job delivered more often than this (it keeps killing workers)",
    )
    parser.add_argument(
        "--simulate-seconds-per-step",
        type=float,
        default=None,
        metavar="SECONDS",
        help="LOAD SIMULATION for benchmarks/tests: sleep this long per step instead of running a model",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics here (batch sizes, steps, GPU memory; 0: a free port; default: off)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)"
    )


def broker_from(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, NatsAuth]:
    """The broker URL and credentials: ``--nats`` or ``NATS_URL``; credentials only from the environment or
    the ``--nats-creds`` file. Raises :class:`NatsConfigError` with a line that holds no secret."""
    if args.nats and has_secret(args.nats):
        # Refused, not stripped: the password is already in `ps` and shell history; the operator must move it.
        raise NatsConfigError(
            "--nats holds a user, password or token, which every local user can read in `ps`; give the URL "
            "without it, and the credentials in NATS_USER/NATS_PASSWORD, NATS_TOKEN or --nats-creds FILE"
        )
    url = args.nats or environ.get("NATS_URL", "").strip()
    if not url:
        raise NatsConfigError("--nats URL is required (or NATS_URL)")
    return broker(url, environ, args.nats_creds)


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``python -m engine serve``."""
    setup_engine_logging(os.environ, os.getpid())
    try:
        url, auth = broker_from(args, os.environ)
    except NatsConfigError as exc:
        print(f"engine serve: {exc}", file=sys.stderr)
        return 2
    worker_id = args.worker_id or f"{os.uname().nodename}-{os.getpid()}"
    try:
        check_fields(WorkerReady, {"worker_id": worker_id})  # the bot refuses heartbeats with another
        runner = _make_runner(args, worker_id)
        if args.metrics_port is not None:
            runner = _metered(runner, args)
        worker = NatsWorker(
            runner,
            url,
            namespace=args.namespace,
            slots=args.slots,
            heartbeat_seconds=args.heartbeat_seconds,
            max_deliveries=args.max_deliveries,
            auth=auth,
            models=served_models(args, runner.model_name),
        )
    except Exception as exc:
        print(f"engine: cannot start: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, worker.request_stop)
        return await worker.run()

    return asyncio.run(main())


def served_models(args: argparse.Namespace, default: str) -> list[str]:
    """The model names this worker runs jobs for: its default model's and its --models-dir's (read at
    start: restart the worker after adding models), at most MAX_MODELS."""
    from engine.model_files import list_models

    names = list(dict.fromkeys([default, *list_models(args.models_dir)]))
    if len(names) > MAX_MODELS:
        log.warning("%d models; serving the first %d by name", len(names), MAX_MODELS)
    return names[:MAX_MODELS]


def _metered(runner: RunnerLike, args: argparse.Namespace) -> RunnerLike:
    from engine.metrics import MeteredRunner, WorkerMetrics

    metrics = WorkerMetrics(runner.device_name)
    port = metrics.serve(args.metrics_host, args.metrics_port)
    log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
    return MeteredRunner(runner, metrics)


def _make_runner(args: argparse.Namespace, worker_id: str) -> RunnerLike:
    if args.simulate_seconds_per_step is not None:
        from engine.simulate import SimulatedRunner

        log.warning("LOAD SIMULATION: no model; %g s per step", args.simulate_seconds_per_step)
        return SimulatedRunner(args.simulate_seconds_per_step, max_batch=args.max_batch, worker_id=worker_id)
    if not args.model:
        raise ValueError("--model is required (or ENGINE_MODEL)")
    from engine.worker import runner_from_args

    return runner_from_args(args, worker_id)
