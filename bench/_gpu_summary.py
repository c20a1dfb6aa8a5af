"""``python -m bench._gpu_summary``: the JSON summary bench/gpu.sh writes at the end of a run.

It folds bench/engine.py's report, the model build time, nvidia-smi's view of the card and the run's wall
time into one small file, with the issue's targets marked met / missed / not measured. A run that was cut
short (the time budget, a crash) still gets a summary: ``complete`` is false and ``missing`` says what is
absent, so a partial result is never mistaken for a full one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench._stats import write_json

EXPECTED_BATCHES = (1, 4, 8, 16)
EXPECTED_MODES = ("eager", "compiled")


def summarize(
    engine: dict[str, Any] | None,
    *,
    kind: str,
    build_seconds: float | None,
    elapsed_seconds: float | None,
    budget_seconds: float | None,
    exit_code: int | None,
    nvidia_smi: str | None,
    expected_batches: tuple[int, ...] = EXPECTED_BATCHES,
    expected_modes: tuple[str, ...] = EXPECTED_MODES,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "gpu.sh",
        "kind": kind,  # "gpu" (SD 1.5, 512x512, 20 steps) or "cpu-smoke" (the script's own check)
        "exit_code": exit_code,
        "model_build_s": build_seconds,
        "elapsed_s": elapsed_seconds,
        "budget_s": budget_seconds,
        "nvidia_smi": nvidia_smi.strip() if nvidia_smi else None,
    }
    missing: list[str] = []
    if engine is None:
        out.update(complete=False, missing=["bench/engine.py wrote no report"])
        return out
    out["machine"] = engine.get("machine")
    out["config"] = engine.get("config")
    base = engine.get("baseline") or {}
    if "images_per_s" in base:
        out["baseline"] = {k: base.get(k) for k in ("images_per_s", "s_per_image", "peak_allocated_gb")}
    else:
        missing.append("baseline" + (f" ({base['error']})" if base.get("error") else ""))
    modes: dict[str, Any] = {}
    for mode in engine.get("engine", []):
        points = {
            str(p["batch"]): {
                "images_per_s": p["images_per_s"],
                "s_per_image": p["s_per_image"],
                "peak_allocated_gb": p.get("peak_allocated_gb"),
                "vs_baseline": p.get("vs_baseline"),
            }
            for p in mode.get("points", [])
        }
        modes[mode["mode"]] = {"batches": points, "single_image_s": mode.get("single_image_s")}
        if mode.get("error"):
            modes[mode["mode"]]["error"] = mode["error"].strip().splitlines()[-1]
        for b in expected_batches:
            if str(b) not in points:
                missing.append(f"{mode['mode']} batch {b}")
    for m in expected_modes:
        if m not in modes:
            missing.append(f"{m} mode")
    out["modes"] = modes
    out["targets"] = engine.get("targets") or {}
    out["complete"] = not missing and exit_code == 0
    out["missing"] = missing
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._gpu_summary")
    p.add_argument("--engine", type=Path, required=True, help="bench/engine.py's --json report")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kind", default="gpu")
    p.add_argument("--build-seconds", type=float, default=None)
    p.add_argument("--elapsed-seconds", type=float, default=None)
    p.add_argument("--budget-seconds", type=float, default=None)
    p.add_argument("--exit-code", type=int, default=None)
    p.add_argument("--nvidia-smi", type=Path, default=None, help="a file with nvidia-smi's CSV line")
    p.add_argument("--batches", default=",".join(map(str, EXPECTED_BATCHES)))
    p.add_argument("--modes", default=",".join(EXPECTED_MODES))
    args = p.parse_args(argv)
    engine = None
    if args.engine.is_file():
        try:
            engine = json.loads(args.engine.read_text(encoding="utf-8"))
        except ValueError:
            engine = None
    smi = (
        args.nvidia_smi.read_text(encoding="utf-8") if args.nvidia_smi and args.nvidia_smi.is_file() else None
    )
    summary = summarize(
        engine,
        kind=args.kind,
        build_seconds=args.build_seconds,
        elapsed_seconds=args.elapsed_seconds,
        budget_seconds=args.budget_seconds,
        exit_code=args.exit_code,
        nvidia_smi=smi,
        expected_batches=tuple(int(b) for b in args.batches.split(",") if b),
        expected_modes=tuple(m for m in args.modes.split(",") if m),
    )
    write_json(args.out, summary)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
