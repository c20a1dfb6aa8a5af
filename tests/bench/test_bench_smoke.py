"""The benchmarks run and report what they promise, on tiny parameters. Sane fields only: benchmarks
measure, tests never assert timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench._gpu_summary import summarize
from bench._stats import covered_seconds, percentile, summary

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    # One torch thread: on a small shared machine torch's default (a thread per core) makes each engine call
    # wait for a core that another process holds, and these runs take minutes instead of seconds.
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _run(args: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{tail}"
    return proc


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


# ------------------------------------------------------------------------------------------- helpers


def test_percentile_and_summary():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95
    s = summary([0.010, 0.020, 0.030], scale=1000)
    assert s["n"] == 3 and s["p50"] == 20.0 and s["max"] == 30.0
    assert summary([])["p50"] is None


def test_covered_seconds_counts_a_shared_batch_once():
    # Four jobs of one batch report the same 2 s; a later job runs 1 s after a 1 s idle gap.
    intervals = [(0.0, 2.0)] * 4 + [(3.0, 4.0)]
    assert covered_seconds(intervals, 0.0, 4.0) == pytest.approx(3.0)
    assert covered_seconds(intervals, 1.0, 3.5) == pytest.approx(1.5)  # clipped to the window
    assert covered_seconds([], 0.0, 1.0) == 0.0


def test_gpu_summary_marks_a_partial_run():
    engine = {
        "machine": {"gpu": "NVIDIA H100"},
        "config": {"size": "512x512"},
        "baseline": {"error": "RuntimeError: boom"},
        "engine": [
            {
                "mode": "eager",
                "single_image_s": 0.25,
                "points": [{"batch": 1, "images_per_s": 4.0, "s_per_image": 0.25, "peak_allocated_gb": 2.5}],
            }
        ],
        "targets": {"full_queue_images_per_s": 4.0},
    }
    out = summarize(
        engine,
        kind="gpu",
        build_seconds=30,
        elapsed_seconds=480,
        budget_seconds=480,
        exit_code=124,
        nvidia_smi="NVIDIA H100 80GB HBM3, 81559 MiB, 550.54",
    )
    assert out["complete"] is False
    assert "eager batch 4" in out["missing"] and "compiled mode" in out["missing"]
    assert any(m.startswith("baseline (RuntimeError") for m in out["missing"])
    assert out["modes"]["eager"]["batches"]["1"]["images_per_s"] == 4.0
    assert (
        summarize(
            None,
            kind="gpu",
            build_seconds=None,
            elapsed_seconds=None,
            budget_seconds=None,
            exit_code=1,
            nvidia_smi=None,
        )["complete"]
        is False
    )


# ---------------------------------------------------------------------------------------- the scripts


def test_engine_bench_reports_a_sweep_and_a_baseline(tmp_path, tiny_model):
    out = tmp_path / "engine.json"
    proc = _run(
        [
            sys.executable,
            "-m",
            "bench.engine",
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
            "--size",
            "64",
            "--steps",
            "2",
            "--batches",
            "1,2",
            "--images",
            "2",
            "--baseline-images",
            "1",
            "--single-runs",
            "1",
            "--json",
            str(out),
        ]
    )
    assert "x base" in proc.stdout  # the printed table
    r = json.loads(out.read_text())
    assert r["benchmark"] == "engine" and r["machine"]["cpu_cores"] >= 1 and r["machine"]["torch"]
    assert r["config"]["size"] == "64x64" and r["config"]["steps"] == 2
    assert _positive(r["baseline"]["images_per_s"]) and _positive(r["baseline"]["s_per_image"])
    (eager,) = r["engine"]
    assert eager["mode"] == "eager" and "error" not in eager
    assert [p["batch"] for p in eager["points"]] == [1, 2]
    for p in eager["points"]:
        assert p["images"] >= 2 and _positive(p["images_per_s"]) and _positive(p["s_per_image"])
        assert _positive(p["vs_baseline"]) and p["request_latency_ms"]["n"] == p["images"] * p["repeats"]
        assert p["peak_allocated_gb"] is None  # no GPU memory on a CPU
    assert _positive(eager["single_image_s"])
    t = r["targets"]
    assert t["applies"] is False  # the tiny model on a CPU is not what the H100 targets are about
    assert t["full_queue_best_at"]["batch"] in (1, 2) and _positive(t["vs_baseline"])


def test_load_bench_drives_the_bot_and_accounts_for_every_job(tmp_path, tiny_model):
    out = tmp_path / "load.json"
    proc = _run(
        [
            sys.executable,
            "-m",
            "bench.load",
            "--users",
            "2",
            "--jobs",
            "2",
            "--size",
            "64",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--alone-repeats",
            "1",
            "--model",
            str(tiny_model),
            "--json",
            str(out),
        ]
    )
    assert "targets:" in proc.stdout
    r = json.loads(out.read_text())
    jobs = r["jobs"]
    assert jobs["typed"] == jobs["in_database"] == jobs["done"] == 4
    assert jobs["lost"] == jobs["duplicated"] == jobs["failed"] == 0
    for name in ("first_reply", "queue_wait", "engine", "end_to_end", "bot_overhead"):
        assert r["latency_ms"][name]["n"] == 4 and r["latency_ms"][name]["p50"] is not None, name
    tp = r["throughput"]
    assert tp["images"] == 16 and _positive(tp["stack_images_per_s"])
    assert _positive(tp["engine_alone_images_per_s"]) and _positive(tp["ratio"])
    assert r["engine_alone"]["done"] == 4 and r["engine_alone"]["images"] == 16
    assert 0 < r["engine_busy_fraction"] <= 1
    mem = r["memory_mb"]
    assert _positive(mem["bot_peak_rss"]) and _positive(mem["engine_peak_rss"])
    assert mem["engine_peak_rss"] > mem["bot_peak_rss"]  # torch lives only in the engine
    work = r["per_job_work"]
    assert work["discord_rest_by_kind"]["interaction_callback"] == 1.0  # one deferral per command
    assert _positive(work["sql_statements"])
    assert r["engine_batches"]["batches"] >= 1
    assert set(r["targets"]) == {
        "ratio_ge_0.95",
        "bot_overhead_p50_le_30ms",
        "zero_lost",
        "zero_duplicated",
        "bot_rss_flat",
    }
    assert r["targets"]["zero_lost"] is True and r["targets"]["zero_duplicated"] is True
    assert r["bot_exit_code"] == 0  # the bot shut down cleanly on SIGINT


def test_gpu_sh_cpu_smoke_writes_a_complete_summary(tmp_path, tiny_model):
    out = tmp_path / "gpu"
    proc = _run(
        ["bash", "bench/gpu.sh", "--cpu-smoke"],
        PYTHON=sys.executable,
        BENCH_OUT=str(out),
        BENCH_MODEL_DIR=str(tiny_model),
        BENCH_BATCHES="1",
    )
    assert "complete: True" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "cpu-smoke" and s["complete"] is True and s["missing"] == []
    assert s["exit_code"] == 0 and s["model_build_s"] == 0  # the given model folder was reused
    assert _positive(s["modes"]["eager"]["batches"]["1"]["images_per_s"])
    assert _positive(s["baseline"]["images_per_s"])
    assert s["targets"]["applies"] is False
    assert (out / "engine.json").is_file()


def test_gpu_sh_refuses_without_a_gpu(tmp_path):
    if subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    proc = subprocess.run(
        ["bash", "bench/gpu.sh"],
        cwd=ROOT,
        env=_env(BENCH_OUT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "NVIDIA GPU" in proc.stderr
