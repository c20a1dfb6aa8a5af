"""Engine throughput over a batch-size sweep, against a naive diffusers baseline measured in the same run.

    python -m bench.engine --tiny --size 64 --steps 2 --batches 1,4          # CPU, seconds
    python -m bench.engine --model /tmp/sd15-random --device cuda --size 512 --steps 20 \\
        --batches 1,4,8,16 --modes eager,compiled --json engine.json          # what bench/gpu.sh runs

Workload: N requests of one image each (same prompt family, seeds 0..N-1), all queued at once, at a fixed
size, step count and sampler. For each mode (eager; compiled = ``Runner(compile=True)``, as
``python -m engine worker --compile``) and each batch size B the engine's :class:`engine.runner.Runner`
runs them with ``max_batch = B`` after one untimed round at that shape, and reports images/s, s/image,
the per-request latency and, on CUDA, peak GPU memory. "single image" is one request alone on an idle
engine: what a user waits when nobody else is using the bot.

Baseline, as most bots run Stable Diffusion: a plain ``StableDiffusionPipeline.from_pretrained`` in the
same dtype (fp16 on a GPU) on the same device, one request at a time (batch 1), each image PNG-encoded
before the next request starts (a bot has to, to post it). It uses the same scheduler as the engine (built
by engine.samplers.make_scheduler, a plain diffusers scheduler) so that the comparison is about how the
work is executed, not about the sampler. ratio = engine images/s / baseline images/s.

Phases run one after another in one process, each freed before the next, so that peak GPU memory belongs
to the pipeline being measured. The JSON is rewritten after every phase: a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._stats import fmt, machine_info, summary, write_json

PROMPT = "a lighthouse on a cliff at sunset, oil painting, detailed"
NEGATIVE = "blurry, lowres"

# Targets from the issue (SD 1.5 architecture, 512x512, 20 steps, one H100). Reported, never asserted.
TARGET_FULL_QUEUE_IPS = 12.0
TARGET_BASELINE_RATIO = 4.0
TARGET_SINGLE_IMAGE_S = 0.3
TARGET_PEAK_GB_AT_4 = 6.0


def _torch() -> Any:
    import torch

    return torch


def _reset_peak(device: Any) -> None:
    torch = _torch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: Any) -> dict[str, float | None]:
    torch = _torch()
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 1024**3, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 1024**3, 3),
    }


def _free(device: Any) -> None:
    torch = _torch()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- baseline


def run_baseline(args: argparse.Namespace, device: Any, dtype: Any, n: int) -> dict[str, Any]:
    """A plain diffusers pipeline, one request (one image) at a time, PNG-encoded before the next one."""
    torch = _torch()
    from diffusers import StableDiffusionPipeline

    from engine.samplers import make_scheduler

    try:  # the engine's own answer to which name this diffusers takes (torch_dtype was renamed dtype)
        from engine.loading import _dtype_keyword

        dtype_key = _dtype_keyword()
    except ImportError:
        dtype_key = "torch_dtype"
    t_load = time.perf_counter()
    # The plain call a bot makes.
    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False, **{dtype_key: dtype}
    )
    pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t_load

    def one(seed: int) -> float:
        t0 = time.perf_counter()
        image = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            width=args.width,
            height=args.height,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return time.perf_counter() - t0

    try:
        one(10_000)  # untimed: the first calls allocate and pick kernels (on a CPU the first two are slow)
        one(10_001)
        _reset_peak(device)
        walls: list[float] = []
        per_image: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            per_image += [one(i) for i in range(n)]
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        result: dict[str, Any] = {
            "images": n,
            "repeats": args.repeats,
            "wall_s": round(wall, 4),
            "images_per_s": round(n / wall, 4),
            "s_per_image": round(wall / n, 4),
            "images_per_s_each": [round(n / w, 4) for w in walls],
            "single_image_s": round(statistics.median(per_image), 4),
            "load_s": round(load_s, 2),
            **_peak(device),
        }
    finally:
        pipe = None  # drop the weights before the next phase measures its own peak memory
        _free(device)
    return result


# --------------------------------------------------------------------------------------------- engine


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
    torch = _torch()
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
            _reset_peak(device)
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
                **_peak(device),
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
        _free(device)
    return out


# ------------------------------------------------------------------------------------------- report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's H100 targets against what this run measured. They only mean something for SD 1.5 at
    512x512, 20 steps on a GPU (``applies``); the values are reported for any run."""
    engine = [m for m in report.get("engine", []) if m.get("points")]
    if not engine:
        return {}
    config = report.get("config", {})
    applies = (
        config.get("size") == "512x512"
        and config.get("steps") == 20
        and str(config.get("device", "")).startswith("cuda")
        and "tiny" not in str(config.get("model", ""))
    )
    best = max((p for m in engine for p in m["points"]), key=lambda p: p["images_per_s"])
    singles = [m["single_image_s"] for m in engine if m.get("single_image_s") is not None]
    at4 = [p["peak_allocated_gb"] for m in engine for p in m["points"] if p["batch"] == 4]
    base = (report.get("baseline") or {}).get("images_per_s")
    ratio = best["images_per_s"] / base if base else None
    at4_known = [v for v in at4 if v is not None]
    return {
        "applies": applies,
        "full_queue_images_per_s": best["images_per_s"],
        "full_queue_best_at": {"batch": best["batch"]},
        "full_queue_ge_12": best["images_per_s"] >= TARGET_FULL_QUEUE_IPS,
        "vs_baseline": None if ratio is None else round(ratio, 3),
        "vs_baseline_ge_4x": None if ratio is None else ratio >= TARGET_BASELINE_RATIO,
        "single_image_s": min(singles) if singles else None,
        "single_image_le_0.3s": min(singles) <= TARGET_SINGLE_IMAGE_S if singles else None,
        "peak_gb_at_batch_4": max(at4_known) if at4_known else None,
        "peak_at_batch_4_le_6gb": max(at4_known) <= TARGET_PEAK_GB_AT_4 if at4_known else None,
    }


def print_report(report: dict[str, Any]) -> None:
    m, c = report["machine"], report["config"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores)"
    print(
        f"bench.engine  {m['date']}  {where}  load {m['loadavg_1m']}\n"
        f"  {c['size']}, {c['steps']} steps, {c['sampler']}, {c['dtype']} on {c['device']}"
    )
    base = report.get("baseline")
    if base and "images_per_s" in base:
        print(
            f"  baseline (diffusers, 1 request at a time): {fmt(base['images_per_s'], 3)} img/s, "
            f"{fmt(base['s_per_image'], 3)} s/img, peak {base.get('peak_allocated_gb')} GB"
        )
    elif base:
        print(f"  baseline: {base.get('error')}")
    print(f"  {'mode':<10}{'batch':>6}{'img/s':>10}{'s/img':>9}{'p50 ms':>10}{'peak GB':>9}{'x base':>8}")
    for mode in report.get("engine", []):
        if mode.get("error"):
            print(f"  {mode['mode']:<10} failed: {mode['error'].splitlines()[-1]}")
        for p in mode.get("points", []):
            ratio = p.get("vs_baseline")
            print(
                f"  {mode['mode']:<10}{p['batch']:>6}{p['images_per_s']:>10.3f}{p['s_per_image']:>9.3f}"
                f"{fmt(p['request_latency_ms']['p50'], 1):>10}{fmt(p['peak_allocated_gb'], 2):>9}"
                f"{fmt(ratio, 2):>8}"
            )
        if mode.get("single_image_s") is not None:
            print(f"  {mode['mode']:<10} one image alone: {mode['single_image_s']:.3f} s")
    if report.get("targets"):
        t = report["targets"]
        print(
            f"  best {t['full_queue_images_per_s']:.3f} img/s (batch {t['full_queue_best_at']['batch']}), "
            f"{fmt(t['vs_baseline'], 2)}x baseline"
        )


# --------------------------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4,8,16, got {text!r}") from exc
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def _size(text: str) -> tuple[int, int]:
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(w), int(h)
        return int(text), int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 512x768, got {text!r}") from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers folder (e.g. from python -m engine make-model --arch sd15)")
    src.add_argument("--tiny", action="store_true", help="build the tiny random model in a temp folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on a GPU, fp32 on CPU) | fp16 | bf16 | fp32")
    p.add_argument("--size", type=_size, default=(512, 512), help="512 or WxH (default 512)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="DPM++ 2M Karras")
    p.add_argument("--batches", type=_ints, default=[1, 4, 8, 16], help="batch sizes (default 1,4,8,16)")
    p.add_argument("--modes", default="eager", help="eager,compiled (default eager)")
    p.add_argument(
        "--images",
        type=int,
        default=0,
        help="requests timed per batch size (default: max(2 x batch, 32 on a GPU / 8 on CPU))",
    )
    p.add_argument(
        "--baseline-images", type=int, default=0, help="requests for the baseline (default 16 GPU / 4 CPU)"
    )
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed runs per point; the median is reported (default: 3 on CPU, which is noisy; 1 on a GPU)",
    )
    p.add_argument("--single-runs", type=int, default=3, help="repeats of the one-image-alone latency")
    p.add_argument(
        "--static-shapes",
        action="store_true",
        help="compiled mode: one static graph per batch size instead of torch's automatic dynamic shapes",
    )
    p.add_argument("--json", default=None, help="write the report here (rewritten after every phase)")
    args = p.parse_args(argv)
    args.width, args.height = args.size
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("eager", "compiled")]
    if bad:
        p.error(f"unknown mode(s) {bad}: use eager and/or compiled")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        if args.tiny:
            from engine.tiny import make_tiny_model

            args.model = str(make_tiny_model(Path(tmp) / "tiny"))
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from engine import devices

    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(args.dtype, device)
    gpu = device.type == "cuda"
    args.repeats = args.repeats or (1 if gpu else 3)

    def images_for(batch: int) -> int:
        return max(2 * batch, args.images or (32 if gpu else 8))

    report: dict[str, Any] = {
        "benchmark": "engine",
        "machine": machine_info(),
        "config": {
            "model": args.model if not args.tiny else "tiny (python -m engine make-tiny-model)",
            "size": f"{args.width}x{args.height}",
            "steps": args.steps,
            "cfg": args.cfg,
            "sampler": args.sampler,
            "batches": args.batches,
            "modes": args.modes,
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
            "images_per_batch_size": {str(b): images_for(b) for b in args.batches},
            "repeats": args.repeats,
            "static_shapes": args.static_shapes,
        },
        "engine": [],
    }
    t_all = time.perf_counter()

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        base = (report.get("baseline") or {}).get("images_per_s")
        for mode in report["engine"]:
            for p in mode.get("points", []):
                p["vs_baseline"] = round(p["images_per_s"] / base, 3) if base else None
        report["targets"] = targets(report)
        write_json(args.json, report)

    if not args.no_baseline:
        n = args.baseline_images or (16 if gpu else 4)
        try:
            report["baseline"] = run_baseline(args, device, dtype, n)
        except Exception as exc:
            # Measure what can be measured: a broken baseline still leaves the engine sweep.
            report["baseline"] = {"error": "".join(traceback.format_exception_only(exc)).strip()}
            traceback.print_exc()
            _free(device)
        save()
    failures = 0
    for mode in args.modes:
        slot: dict[str, Any] = {"mode": mode, "points": []}
        report["engine"].append(slot)

        def on_point(partial: dict[str, Any], slot: dict[str, Any] = slot) -> None:
            slot.update(partial)
            save()

        try:
            slot.update(run_engine_mode(args, mode, device, images_for, on_point))
        except Exception as exc:
            failures += 1
            slot["error"] = "".join(traceback.format_exception(exc))[-4000:]
            traceback.print_exc()
            _free(device)
        save()
    start_load = report["machine"].get("loadavg_1m")
    report["machine"] = machine_info()  # now with torch (and the GPU) known
    report["machine"]["loadavg_1m_at_start"] = start_load
    save()
    print_report(report)
    return 1 if failures and not any(m.get("points") for m in report["engine"]) else 0


if __name__ == "__main__":
    sys.exit(main())
