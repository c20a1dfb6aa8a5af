"""Helpers shared by the benchmarks: percentiles, busy time, the machine a number came from, RSS sampling,
JSON output. Nothing here imports torch (the load driver must stay light)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summary(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> dict[str, Any]:
    """n, p50, p95, mean, max of ``values`` (each multiplied by ``scale``, e.g. 1000 for ms)."""
    vals = [v * scale for v in values]
    if not vals:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "n": len(vals),
        "p50": r(percentile(vals, 50)),
        "p95": r(percentile(vals, 95)),
        "mean": r(sum(vals) / len(vals)),
        "max": r(max(vals)),
    }


def covered_seconds(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by the union of ``intervals``.

    Jobs that share a UNet batch each report the whole batch as their engine time, so summing their
    engine seconds would count the same busy second several times; the union counts it once."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total = 0.0
    cur_a: float | None = None
    cur_b = 0.0
    for a, b in clipped:
        if cur_a is None or a > cur_b:
            if cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None:
        total += cur_b - cur_a
    return total


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where and when a number was measured. Torch details only when torch is already imported, so the
    load driver does not pay for importing it."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        # Other work on the machine skews timings; the load average says how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            info["gpu"] = torch.cuda.get_device_name(index)
            info["gpu_memory_gb"] = round(props.total_memory / 1024**3, 1)
            info["cuda"] = torch.version.cuda
        else:
            info["gpu"] = None
    for module in ("diffusers", "transformers"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", None)
    return info


@dataclass
class RssSampler:
    """Samples the resident memory of a process (the bot) and, separately, of all its descendants (the
    engine workers it spawned), in a background thread."""

    pid: int
    interval: float = 0.25
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, root MB, children MB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def sample(self) -> tuple[float, float] | None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            root_rss = root.memory_info().rss
            kids = 0
            for child in root.children(recursive=True):
                try:
                    kids += child.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            return None
        return root_rss / MB, kids / MB

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.sample()
            if got is not None:
                self.samples.append((time.time(), *got))
            self._stop.wait(self.interval)

    def cpu_seconds(self) -> tuple[float, float, float] | None:
        """CPU time (user + system) used so far by the process, by its main thread alone (for the bot: the
        asyncio event loop), and by its live descendants."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            t = root.cpu_times()
            main = next((th.user_time + th.system_time for th in root.threads() if th.id == self.pid), 0.0)
            kids = 0.0
            for child in root.children(recursive=True):
                try:
                    c = child.cpu_times()
                    kids += c.user + c.system
                except psutil.Error:
                    continue
        except psutil.Error:
            return None
        return t.user + t.system, main, kids

    def peak(self) -> tuple[float | None, float | None]:
        if not self.samples:
            return None, None
        return max(s[1] for s in self.samples), max(s[2] for s in self.samples)

    def root_between(self, start: float, end: float) -> list[float]:
        return [s[1] for s in self.samples if start <= s[0] <= end]


def rss_trend(sampler: RssSampler, start: float, end: float) -> dict[str, Any]:
    """Is the bot's memory flat over the run? Median RSS of the second quarter of the run (after start-up
    allocations) against the last quarter."""
    span = end - start
    q2 = sampler.root_between(start + span * 0.25, start + span * 0.5)
    q4 = sampler.root_between(start + span * 0.75, end)
    early = percentile(q2, 50)
    late = percentile(q4, 50)
    growth = None if early is None or late is None else late - early
    return {
        "second_quarter_mb": None if early is None else round(early, 1),
        "last_quarter_mb": None if late is None else round(late, 1),
        "growth_mb": None if growth is None else round(growth, 1),
        "samples": len(sampler.root_between(start, end)),
    }


def write_json(path: str | os.PathLike[str] | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(target)  # a reader (gpu.sh's summary) never sees half a file


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
