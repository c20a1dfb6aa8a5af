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
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench._engine_baseline import run_baseline
from bench._engine_common import free_memory
from bench._engine_report import print_report, targets
from bench._engine_sweep import run_engine_mode
from bench._stats import machine_info, write_json


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
            free_memory(device)
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
            free_memory(device)
        save()
    start_load = report["machine"].get("loadavg_1m")
    report["machine"] = machine_info()  # now with torch (and the GPU) known
    report["machine"]["loadavg_1m_at_start"] = start_load
    save()
    print_report(report)
    return 1 if failures and not any(m.get("points") for m in report["engine"]) else 0


if __name__ == "__main__":
    sys.exit(main())
