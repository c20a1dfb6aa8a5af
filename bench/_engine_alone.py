"""The engine alone on the very jobs the stack ran: the parent side, and the child process that runs them
(``python -m bench.load --engine-alone-child``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._load_config import ROOT
from bench._stats import summary, write_json


def request_fields(row: dict[str, Any], job_id: str, preview_every: int) -> dict[str, Any]:
    """The GenerateRequest the JobManager built for this job row (bot/jobs/engine_request.py)."""
    return {
        "job_id": job_id,
        "prompt": row["prompt"],
        "negative_prompt": row["negative_prompt"],
        "seed": row["seed"],
        "steps": row["steps"],
        "cfg_scale": row["cfg_scale"],
        "width": row["width"],
        "height": row["height"],
        "count": row["count"],
        "sampler": row["sampler"],
        "preview_every": preview_every,
    }


def run_engine_alone(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The same jobs through the engine's Runner, all queued at once, in a fresh process like the worker."""
    spec_path = workdir / "engine_alone_spec.json"
    out_path = workdir / "engine_alone.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if spec.get("pin"):
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", "--engine-alone-child", str(spec_path), "--json", str(out_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=spec.get("timeout", 900),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"engine-alone run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out_path.read_text(encoding="utf-8"))


def engine_alone_child(spec_path: str, out: str | None) -> int:
    import resource
    import time as _time

    from engine.protocol import GenerateRequest, JobDone
    from engine.runner import Runner

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("pin"):
        os.sched_setaffinity(0, {1})  # where the stack's engine worker ran
    # Built as engine/worker.py's run_worker builds it, with the bot's worker flags.
    runner = Runner(spec["model"], device=spec["device"], dtype=spec["dtype"], max_batch=spec["max_batch"])
    for fields in spec["warmup"]:  # the same untimed jobs the stack ran, one at a time
        runner.run([GenerateRequest(**fields)])
    # Repeated, and the median run reported: unlike the stack, the engine alone is cheap to run again, and
    # on a shared machine one run can be hit by someone else's burst.
    walls: list[float] = []
    for r in range(max(1, spec.get("repeats", 1))):
        requests = [GenerateRequest(**{**f, "job_id": f"{f['job_id']}-r{r}"}) for f in spec["requests"]]
        t0 = _time.perf_counter()
        results = runner.run(requests)
        walls.append(_time.perf_counter() - t0)
    runner.close()
    wall = statistics.median(walls)
    done = [e for e in results.values() if isinstance(e, JobDone)]
    images = sum(len(e.images) for e in done)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    write_json(
        out,
        {
            "wall_s": round(wall, 4),
            "repeats": len(walls),
            "jobs": len(requests),
            "done": len(done),
            "images": images,
            "images_per_s": round(images / wall, 3) if wall > 0 else None,
            "images_per_s_each": [round(images / w, 3) for w in walls],
            "engine_ms": summary((e.engine_seconds for e in done), 1000),
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "device": runner.device_name,
        },
    )
    return 0
