"""bench.engine's engine side: the Runner over a batch-size sweep, in one mode (eager or compiled)."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench._engine_common import NEGATIVE, PROMPT, free_memory, peak_memory, reset_peak, torch_module
from bench._stats import summary


def _requests(n: int, args: argparse.Namespace, tag: str) -> list[Any]:
    from engine.protocol import GenerateRequest

    return [
        GenerateRequest(
            job_id=f"{tag}-{i}",
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            seed=i,
            steps=args.steps,
            cfg_scale=args.cfg,
            width=args.width,
            height=args.height,
            count=1,
            sampler=args.sampler,
        )
        for i in range(n)
    ]


def _timed_run(runner: Any, requests: list[Any]) -> tuple[float, list[Any]]:
    from engine.protocol import JobDone

    t0 = time.perf_counter()
    results = runner.run(requests)
    wall = time.perf_counter() - t0
    failed = [e for e in results.values() if not isinstance(e, JobDone)]
    if failed:
        raise RuntimeError(f"{len(failed)} request(s) did not finish: {failed[0]!r}")
    return wall, list(results.values())


def run_engine_mode(
    args: argparse.Namespace,
    mode: str,
    device: Any,
    images_for: Callable[[int], int],
    on_point: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """One Runner for the mode; for each batch size: an untimed round at that shape, then N requests."""
    torch = torch_module()
    from engine.runner import Runner

    compiled = mode == "compiled"
    if compiled and args.static_shapes:
        # One static graph per batch shape (an upper bound) instead of torch's automatic dynamic shapes.
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    t_load = time.perf_counter()
    runner = Runner(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch=max(args.batches),
        compile=compiled,
        warmup=False,  # warmed up below, at the benchmark's own shapes
    )
    out: dict[str, Any] = {
        "mode": mode,
        "device": runner.device_name,
        "dtype": str(runner.dtype).replace("torch.", ""),
        "load_s": round(time.perf_counter() - t_load, 2),
        "points": [],
    }
    try:
        # The first calls of a fresh pipeline are slow (allocator growth, kernel selection, cuDNN/oneDNN
        # plans; compiling in compiled mode): one untimed round at the largest batch and one alone.
        t_warm = time.perf_counter()
        _timed_run(runner, _requests(max(args.batches), args, "warm-all"))
        _timed_run(runner, _requests(1, args, "warm-one"))
        out["warmup_s"] = round(time.perf_counter() - t_warm, 2)
        for batch in args.batches:
            # Runner.plan reads max_batch on every batch, so one loaded model serves the whole sweep.
            runner.max_batch = batch
            n = images_for(batch)
            t_warm = time.perf_counter()
            _timed_run(runner, _requests(batch, args, f"warm{batch}"))
            warm_s = time.perf_counter() - t_warm
            reset_peak(device)
            walls: list[float] = []
            events: list[Any] = []
            for r in range(args.repeats):
                wall_r, events_r = _timed_run(runner, _requests(n, args, f"b{batch}r{r}"))
                walls.append(wall_r)
                events += events_r
            wall = statistics.median(walls)  # the median repeat: robust to another process's burst
            point: dict[str, Any] = {
                "batch": batch,
                "images": n,
                "repeats": args.repeats,
                "wall_s": round(wall, 4),
                "images_per_s": round(n / wall, 4),
                "s_per_image": round(wall / n, 4),
                "images_per_s_each": [round(n / w, 4) for w in walls],
                "request_latency_ms": summary((e.engine_seconds for e in events), 1000),
                "warmup_s": round(warm_s, 2),  # includes compiling this shape in compiled mode
                **peak_memory(device),
            }
            if batch == 1 or batch == min(args.batches):
                singles = []
                for i in range(args.single_runs):
                    wall1, _ = _timed_run(runner, _requests(1, args, f"single{i}"))
                    singles.append(wall1)
                out["single_image_s"] = round(statistics.median(singles), 4)
                out["single_image_runs_s"] = [round(s, 4) for s in singles]
            out["points"].append(point)
            on_point(out)
    finally:
        runner.close()
        del runner
        if compiled:
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        free_memory(device)
    return out
