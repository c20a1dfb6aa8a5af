"""The local transport: engine worker processes on this machine, spoken to over OS pipes.

Each worker is ``python -m engine worker ...``; frames (engine/protocol.py) go down its stdin and come
back on its stdout, and its stderr is the bot's own so engine logs show in the same terminal. A worker
that dies is started again; the jobs it held come back as retryable failures, and the JobManager
decides whether to run them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bot.shutdown import WORKER_GRACE
from bot.transport.base import Closed, NoRoom
from engine.protocol import (
    Cancel,
    Event,
    GenerateRequest,
    JobCancelled,
    JobDone,
    JobFailed,
    Message,
    ProtocolError,
    Shutdown,
    Submit,
    WorkerReady,
    frame,
    read_frame_async,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerOptions:
    model: str
    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 4
    models_dir: str | None = None
    lora_dir: str | None = None
    embeddings_dir: str | None = None
    allow_pickle: bool = False
    extra_args: Sequence[str] = ()
    safety_checker: str | None = None  # SAFETY_CHECKER: checks images of jobs that ask for it
    model_cache: tuple[int, int, int] = (2, 0, 0)  # MODEL_CACHE, MODEL_CACHE_RAM, MODEL_CACHE_GB
    python: str = sys.executable
    env: dict[str, str] | None = None  # None: inherit the bot's environment
    log_format: str = "text"  # LOG_FORMAT: the workers log to the bot's stderr in the bot's format

    def command(self, worker_id: str, device: str) -> list[str]:
        cmd = [
            self.python,
            "-m",
            "engine",
            "worker",
            "--model",
            self.model,
            "--device",
            device,
            "--dtype",
            self.dtype,
            "--max-batch",
            str(self.max_batch),
            "--worker-id",
            worker_id,
            "--model-cache",
            str(self.model_cache[0]),
            "--model-cache-ram",
            str(self.model_cache[1]),
            "--model-cache-gb",
            str(self.model_cache[2]),
        ]
        if self.models_dir:
            cmd += ["--models-dir", self.models_dir]
        if self.lora_dir:
            cmd += ["--lora-dir", self.lora_dir]
        if self.embeddings_dir:
            cmd += ["--embeddings-dir", self.embeddings_dir]
        if self.allow_pickle:
            cmd.append("--allow-pickle")
        if self.safety_checker:
            cmd += ["--safety-checker", self.safety_checker]
        return cmd + list(self.extra_args)


@dataclass(slots=True)
class _Worker:
    worker_id: str
    device: str
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    max_batch: int = 1
    inflight: dict[str, int] = field(default_factory=dict)  # job id -> its image count
    # The models of the jobs it was sent last, most recent last: those its model cache likely holds.
    recent: dict[str | None, None] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    failures_before_ready: int = 0
    broken: bool = False  # a send found it gone: no jobs until its exit is read and it is started again

    @property
    def room(self) -> int:
        """Images this worker can still take. Counted in images, not jobs: the engine batches images,
        and two batches' worth in hand means the next batch is ready when one finishes, whether the
        jobs ask for one image or four."""
        # Its process may have exited before the reader has read to the end of its output (a worker killed
        # while the bot is busy): no job must go there meanwhile, each would fail and count against it.
        if not self.ready or self.broken or self.proc is None or self.proc.returncode is not None:
            return 0
        return max(0, 2 * self.max_batch - sum(self.inflight.values()))


def pick_worker(candidates: Sequence[_Worker], model: str | None) -> _Worker:
    """Of the workers with room, one that ran ``model`` lately (it is likely still loaded there), then the
    one with the most room for its batch size."""
    return max(candidates, key=lambda w: (model in w.recent, w.room / w.max_batch))


class LocalTransport:
    def __init__(self, options: WorkerOptions, workers: int = 1, *, restart_delay: float = 1.0) -> None:
        self.options = options
        self.restart_delay = restart_delay
        self._workers = [_Worker(f"local-{i}", self._device_for(i, workers)) for i in range(workers)]
        self._events: asyncio.Queue[Event | Closed] = asyncio.Queue()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _device_for(self, index: int, count: int) -> str:
        # One worker per GPU: with DEVICE=cuda and several workers, worker i gets cuda:i.
        if count > 1 and self.options.device == "cuda":
            return f"cuda:{index}"
        return self.options.device

    async def start(self) -> None:
        # Returns at once: model loading can take minutes (a first download), and the bot should be
        # online meanwhile. Jobs wait in the JobManager's queue until a worker reports ready.
        for worker in self._workers:
            await self._spawn(worker)

    async def _spawn(self, worker: _Worker) -> None:
        env = dict(os.environ if self.options.env is None else self.options.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("DISCORD_TOKEN", None)  # the engine has no use for the bot's secret
        env["LOG_FORMAT"] = self.options.log_format
        worker.ready, worker.broken = False, False
        worker.proc = await asyncio.create_subprocess_exec(
            *self.options.command(worker.worker_id, worker.device),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=env,
        )
        log.info("engine worker %s started (pid %s) on %s", worker.worker_id, worker.proc.pid, worker.device)
        worker.reader = asyncio.create_task(self._read(worker), name=f"engine-{worker.worker_id}")

    async def _read(self, worker: _Worker) -> None:
        proc = worker.proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                message = await read_frame_async(proc.stdout)
                if message is None:
                    break
                self._on_message(worker, message)
        except ProtocolError as exc:
            log.error("engine worker %s sent a bad frame (%s); restarting it", worker.worker_id, exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        except asyncio.CancelledError:
            raise
        code = await proc.wait()
        self._on_exit(worker, code)

    def _on_message(self, worker: _Worker, message: Message) -> None:
        if isinstance(message, Submit | Cancel | Shutdown):  # a worker sends events only; nothing to act on
            log.warning("engine worker %s sent a %s; ignored", worker.worker_id, type(message).__name__)
            return
        if isinstance(message, WorkerReady):
            worker.ready = True
            worker.max_batch = max(1, message.max_batch)
            worker.failures_before_ready = 0
            log.info("engine worker %s ready: %s on %s", worker.worker_id, message.model, message.device)
        elif isinstance(message, JobDone | JobFailed | JobCancelled):
            worker.inflight.pop(message.job_id, None)
        self._events.put_nowait(message)

    def _on_exit(self, worker: _Worker, code: int) -> None:
        was_ready = worker.ready
        worker.ready = False
        lost = sorted(worker.inflight)
        worker.inflight.clear()
        for job_id in lost:
            self._events.put_nowait(
                JobFailed(job_id, f"the engine worker stopped (exit code {code})", retryable=True)
            )
        if self._closing:
            return
        if not was_ready:
            worker.failures_before_ready += 1
        # A worker that cannot even load its model must not spin: back off up to a minute.
        delay = min(60.0, self.restart_delay * 2 ** max(0, worker.failures_before_ready - 1))
        log.warning(
            "engine worker %s exited with code %s; restarting in %.0f s", worker.worker_id, code, delay
        )
        task = asyncio.create_task(self._respawn_later(worker, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn_later(self, worker: _Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._closing:
            await self._spawn(worker)

    def free_slots(self) -> int:
        return sum(w.room for w in self._workers)

    def accepts(self, model: str | None) -> bool:
        return True  # every local worker reads the same MODELS_DIR

    def worker_count(self) -> int:
        return sum(1 for w in self._workers if w.ready)

    async def submit(self, request: GenerateRequest) -> None:
        candidates = [w for w in self._workers if w.room > 0]
        if not candidates:
            raise NoRoom("no engine worker has a free slot")
        worker = pick_worker(candidates, request.model)
        worker.recent.pop(request.model, None)
        worker.recent[request.model] = None
        while len(worker.recent) > self.options.model_cache[0]:
            del worker.recent[next(iter(worker.recent))]
        worker.inflight[request.job_id] = request.count
        if not await self._send(worker, Submit(request)):
            # Nothing reached it: the job goes back in line uncounted; its exit is read and reported soon.
            worker.inflight.pop(request.job_id, None)
            worker.broken = True
            raise NoRoom(f"engine worker {worker.worker_id} stopped before the job reached it")

    async def cancel(self, job_id: str) -> None:
        for worker in self._workers:
            if job_id in worker.inflight:
                await self._send(worker, Cancel(job_id))

    async def _send(self, worker: _Worker, message: Submit | Cancel | Shutdown) -> bool:
        proc = worker.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        try:
            proc.stdin.write(frame(message))
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False  # the reader sees the exit and reports the worker's jobs
        return True

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.returncode is None]

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._events.get()
            if item is Closed.CLOSED:
                return
            yield item

    async def close(self, grace: float = WORKER_GRACE) -> None:
        """Stop every worker at once, each within ``grace`` seconds (then killed).

        A ready worker gets ``Shutdown`` and the end of its input: its running batch stops at the next
        step, what is already rendered goes out, the rest comes back as retryable failures. A worker still
        loading its model reads no input until it is loaded (minutes, for a first download), so it is
        terminated instead: it holds no jobs."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self._stop(worker, grace) for worker in self._workers))
        for worker in self._workers:
            if worker.reader is not None:  # the last frames of a stopped worker, then its exit
                await asyncio.wait({worker.reader}, timeout=2.0)
                worker.reader.cancel()
        self._events.put_nowait(Closed.CLOSED)

    async def _stop(self, worker: _Worker, grace: float) -> None:
        proc = worker.proc
        if proc is None or proc.returncode is not None:
            return
        if worker.ready:
            with contextlib.suppress(TimeoutError):  # a full pipe must not hold the shutdown
                await asyncio.wait_for(self._send(worker, Shutdown()), grace)
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("engine worker %s did not stop in %.0f s; killing it", worker.worker_id, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
