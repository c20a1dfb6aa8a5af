"""End-to-end load: the real bot (``python -m bot``, a subprocess with its own engine worker) driven through
the loopback Discord by U users x J jobs, then the engine alone on the very same jobs.

    python -m bench.load                                 # 20 users x 5 jobs, tiny model, 128x128, 4 steps
    python -m bench.load --users 2 --jobs 2 --json out.json
    python -m bench.load --model /models/sd15 --device cuda --size 512 --steps 20

Each user types /imagine, waits for the bot's first reply (the "thinking..." deferral), then types the next
one, so the queue fills at once and stays full. What is reported (definitions in BENCHMARKS.md):

- time to first reply, queue wait, engine time, end-to-end latency, bot overhead (p50/p95, ms);
- throughput of the whole stack and of the engine alone on the same jobs, and their ratio;
- engine busy fraction (the union of the jobs' engine intervals over the run's wall time);
- lost jobs (typed, never answered with a result), duplicated jobs (a result posted twice), failures;
- peak RSS of the bot process and of the engine worker, and whether the bot's RSS stays flat.

Timings come from three clocks on one machine, all wall-clock ``time.time()``: this driver (when a command
was typed; the loopback Discord, in this process, stamps replies and results), the bot's database
(``created_at``) and the bot's probe (bench/_botprobe.py: when each engine result reached the JobManager).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._bot_records import jobs_from_db
from bench._engine_alone import engine_alone_child, request_fields, run_engine_alone
from bench._load_config import ROOT, Config
from bench._load_driver import run_stack
from bench._load_report import analyse, print_report
from bench._stats import machine_info, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--jobs", type=int, default=5, help="jobs per user")
    p.add_argument("--count", type=int, default=4, choices=(1, 2, 3, 4), help="images per job")
    p.add_argument("--size", type=int, default=128, help="image side (the bot's DEFAULT_SIZE)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--preview-every", type=int, default=5)
    p.add_argument("--model", default=None, help="default: a tiny random model built in a temp folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--think-ms", type=float, default=0.0, help="pause between a user's commands")
    p.add_argument(
        "--pin",
        action="store_true",
        help="engine worker alone on CPU 1 with one torch thread, everything else on CPU 0 (as with a GPU, "
        "the bot then does not take the engine's compute)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed jobs first (both runs)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all results")
    p.add_argument("--no-engine-alone", action="store_true", help="skip the engine-alone comparison")
    p.add_argument(
        "--alone-repeats", type=int, default=3, help="engine-alone runs of the jobs; the median is used"
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, images, bot.log)")
    p.add_argument("--detail", action="store_true", help="per-job timings in the JSON")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--profile-bot", default=None, help="run the bot under cProfile; pstats to this file")
    p.add_argument("--engine-alone-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_alone_child:
        return engine_alone_child(args.engine_alone_child, args.json)
    cfg = Config(
        users=args.users,
        jobs=args.jobs,
        count=args.count,
        size=args.size,
        steps=args.steps,
        max_batch=args.max_batch,
        preview_every=args.preview_every,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        think_ms=args.think_ms,
        warmup=args.warmup,
        pin=args.pin,
        alone_repeats=args.alone_repeats,
        timeout=args.timeout,
        engine_alone=not args.no_engine_alone,
        keep=args.keep,
        detail=args.detail,
        json=args.json,
        profile_bot=args.profile_bot,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        model = cfg.model
        if model is None:
            subprocess.run(
                [sys.executable, "-m", "engine", "make-tiny-model", str(workdir / "tiny")],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            model = str(workdir / "tiny")
        load_at_start = machine_info()["loadavg_1m"]  # other work on the machine skews every timing
        run = asyncio.run(run_stack(cfg, model, workdir))
        alone = None
        if cfg.engine_alone:
            rows = {r["interaction_id"]: r for r in jobs_from_db(workdir / "bot.db")}
            timed = [
                rows[t.interaction_id]
                for t in sorted(run.typed, key=lambda t: t.t_typed)
                if t.interaction_id in rows
            ]
            warm = [rows[i] for i in run.warmup_interactions if i in rows] or timed[:1]
            spec = {
                "model": model,
                "device": cfg.device,
                "dtype": cfg.dtype,
                "max_batch": cfg.max_batch,
                "warmup": [request_fields(r, f"warmup-{i}", cfg.preview_every) for i, r in enumerate(warm)],
                "requests": [request_fields(r, f"job-{i}", cfg.preview_every) for i, r in enumerate(timed)],
                "timeout": cfg.timeout,
                "pin": cfg.pin,
                "repeats": cfg.alone_repeats,
            }
            alone = run_engine_alone(spec, workdir)
        report = analyse(cfg, run, alone)
        report["machine"]["loadavg_1m_at_start"] = load_at_start
        if cfg.keep:
            report["workdir"] = str(workdir)
        print_report(report)
        write_json(cfg.json, report)
    finally:
        if not cfg.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
