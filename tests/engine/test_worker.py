"""The worker process over real pipes: `python -m engine worker`, frames in, events out."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.pnginfo import read_png_parameters
from engine.protocol import (
    Cancel,
    ImageResult,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    JobStarted,
    Shutdown,
    Submit,
    WorkerReady,
    read_frame,
    write_frame,
)
from tests.enginefork import engine_python

from .conftest import request

ROOT = Path(__file__).resolve().parents[2]


class WorkerProc:
    def __init__(self, model: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", ENGINE_LOG_LEVEL="WARNING", **(env or {}))
        self.proc = subprocess.Popen(
            [
                engine_python(),  # tests/enginefork.py
                "-m",
                "engine",
                "worker",
                "--model",
                str(model),
                "--device",
                "cpu",
                "--worker-id",
                "w-test",
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self.events: list = []

    def send(self, message) -> None:
        write_frame(self.proc.stdin, message)

    def next(self, timeout: float = 60):
        box: list = []
        t = threading.Thread(target=lambda: box.append(read_frame(self.proc.stdout)), daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            raise TimeoutError("no frame from the worker")
        self.events.append(box[0])
        return box[0]

    def until(self, predicate, timeout: float = 60):
        while True:
            event = self.next(timeout)
            if event is None:
                raise EOFError("worker closed its output")
            if predicate(event):
                return event

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def worker(tiny_model):
    w = WorkerProc(tiny_model, "--max-batch", "4")
    yield w
    w.close()


def test_worker_serves_jobs_and_survives_bad_requests(worker):
    ready = worker.next()
    assert isinstance(ready, WorkerReady)
    assert ready.worker_id == "w-test" and ready.model == "tiny" and ready.device == "cpu"
    assert ready.max_batch == 4

    worker.send(Submit(request("bad", sampler="Euler b")))
    failed = worker.next()
    assert isinstance(failed, JobFailed) and failed.job_id == "bad"
    assert "Euler a" in failed.reason and not failed.retryable

    worker.send(Submit(request("img", kind="img2img")))  # no init image
    failed = worker.next()
    assert isinstance(failed, JobFailed) and "init image" in failed.reason

    worker.send(Submit(request("ok", count=2, steps=3, preview_every=1, seed=42)))
    done = worker.until(lambda e: isinstance(e, JobDone | JobFailed))
    assert isinstance(done, JobDone), done
    assert [i.seed for i in done.images] == [42, 43]
    assert done.model == "tiny" and done.worker_id == "w-test" and done.engine_seconds > 0
    kinds = [type(e) for e in worker.events if getattr(e, "job_id", None) == "ok"]
    assert kinds[0] is JobStarted
    steps = [e for e in worker.events if isinstance(e, JobProgress) and e.job_id == "ok"]
    assert [e.step for e in steps] == [1, 2, 3] and all(e.total == 3 for e in steps)
    assert steps[0].preview and steps[1].preview  # previews at steps 1 and 2 (not at the last)
    assert "Seed: 43" in read_png_parameters(done.images[1].png)

    assert worker.close() == 0  # EOF on stdin: clean exit


def test_worker_cancel_running_and_queued(worker):
    assert isinstance(worker.next(), WorkerReady)
    worker.send(Submit(request("long", steps=150)))  # engine/bounds.py's most
    worker.send(Submit(request("queued", steps=150, width=128)))  # other size: not in the same batch
    worker.until(lambda e: isinstance(e, JobProgress) and e.job_id == "long")
    worker.send(Cancel("queued"))
    worker.send(Cancel("long"))
    seen = {}
    while len(seen) < 2:
        e = worker.until(lambda e: isinstance(e, JobCancelled | JobDone | JobFailed))
        seen[e.job_id] = e
    assert all(isinstance(e, JobCancelled) for e in seen.values())
    progress = [e.step for e in worker.events if isinstance(e, JobProgress) and e.job_id == "long"]
    assert max(progress) < 20  # stopped within a step or so, not after 150
    worker.send(Cancel("nobody"))  # unknown ids are ignored
    worker.send(Submit(request("after")))
    done = worker.until(lambda e: isinstance(e, JobDone | JobFailed))
    assert isinstance(done, JobDone) and done.job_id == "after"


def test_worker_shutdown_fails_queued_jobs_retryably(worker):
    assert isinstance(worker.next(), WorkerReady)
    worker.send(Submit(request("a", steps=8)))
    worker.until(lambda e: isinstance(e, JobStarted))
    worker.send(Submit(request("b", steps=2, width=128)))
    worker.send(Shutdown())
    ends = {}
    while len(ends) < 2:
        e = worker.until(lambda e: isinstance(e, JobDone | JobFailed | JobCancelled))
        ends[e.job_id] = e
    assert isinstance(ends["a"], JobDone)
    assert isinstance(ends["b"], JobFailed) and ends["b"].retryable
    assert worker.next() is None
    assert worker.proc.wait(30) == 0


def test_out_of_memory_fails_the_request_and_the_worker_survives(tiny_model):
    w = WorkerProc(tiny_model, env={"ENGINE_TEST_OOM_ABOVE": "0"})
    try:
        assert isinstance(w.next(), WorkerReady)
        for job_id in ("first", "second"):
            w.send(Submit(request(job_id, count=2)))
            failed = w.until(lambda e: isinstance(e, JobDone | JobFailed))
            assert isinstance(failed, JobFailed) and failed.job_id == job_id
            assert "out of GPU memory" in failed.reason and not failed.retryable
        assert w.close() == 0
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


def test_bad_model_exits_before_ready(tmp_path):
    w = WorkerProc(tmp_path / "missing")
    assert w.next() is None
    assert w.close() == 2


def test_stray_prints_do_not_reach_the_protocol_stream():
    code = (
        "import os, sys\n"
        "from engine.worker import claim_stdout\n"
        "from engine.protocol import write_frame, JobCancelled\n"
        "out = claim_stdout()\n"
        "print('stray print')\n"
        "os.write(1, b'raw write to fd 1\\n')\n"
        "write_frame(out, JobCancelled('x'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import io

    stream = io.BytesIO(proc.stdout)
    assert read_frame(stream) == JobCancelled("x")
    assert read_frame(stream) is None
    assert b"stray print" in proc.stderr and b"raw write" in proc.stderr


def test_emit_never_waits_for_the_bot_to_read_and_keeps_the_order():
    """The batch thread and the PNG pool emit; a bot slow to read a result's megabytes off the pipe must not
    stall them (engine/worker.py: a writer thread does the writing)."""
    from engine.worker import Worker

    read_end, write_end = os.pipe()
    worker = Worker(None, os.fdopen(write_end, "wb"), io.BytesIO())
    big = JobDone("big", [ImageResult(0, 1, b"x" * (4 << 20))])  # far past a pipe's buffer
    returned = threading.Event()

    def emit_both() -> None:
        worker.emit(big)
        worker.emit(JobCancelled("next"))
        returned.set()

    threading.Thread(target=emit_both, daemon=True).start()
    # Nobody reads yet: both emits return regardless (a writing emit would block on the full pipe).
    assert returned.wait(timeout=60), "emit waited for the reader"
    with os.fdopen(read_end, "rb") as bot_side:
        first, second = read_frame(bot_side), read_frame(bot_side)
    assert isinstance(first, JobDone) and first.images[0].png == big.images[0].png
    assert second == JobCancelled("next")
