"""bench.engine's report: the issue's targets against a run, and the text form."""

from __future__ import annotations

from typing import Any

from bench._stats import fmt

TARGET_FULL_QUEUE_IPS = 12.0
TARGET_BASELINE_RATIO = 4.0
TARGET_SINGLE_IMAGE_S = 0.3
TARGET_PEAK_GB_AT_4 = 6.0


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
