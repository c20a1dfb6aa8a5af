"""The engine worker process: protocol frames in on stdin, events out on the real stdout.

At start the real stdout file descriptor is duplicated for the protocol and fd 1 / ``sys.stdout`` are
pointed at stderr, so stray prints and library progress bars can never corrupt a frame.

Life of a worker: load the model (a failure exits with status 2 and a reason on stderr, before any frame),
write ``WorkerReady``, then serve:

- ``Submit``: the request is validated at once (a bad one gets ``JobFailed``), then queued; the main
  thread runs batches (priority first, then arrival) and emits ``JobStarted``, ``JobProgress`` each step
  (with a preview every ``preview_every`` steps) and ``JobDone`` once the PNGs are encoded;
- ``Cancel``: a queued job gets ``JobCancelled`` at once, a running one at its next denoising step;
  an unknown or finished job id is ignored;
- ``Shutdown``: the running batch finishes, queued jobs get ``JobFailed(retryable=True)``, then exit 0;
- end of stdin (the bot went away): the running batch stops at its next step and the worker exits 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
from typing import IO, Any

from engine.logging_setup import setup_engine_logging
from engine.protocol import (
    Cancel,
    Event,
    JobFailed,
    ProtocolError,
    Shutdown,
    Submit,
    WorkerReady,
    read_frame,
    write_frame,
)

log = logging.getLogger("engine.worker")


def claim_stdout() -> IO[bytes]:
    """Duplicate the real stdout for the protocol; from now on fd 1 and ``sys.stdout`` write to stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=1 << 16)


class Worker:
    def __init__(self, runner: Any, out: IO[bytes], inp: IO[bytes]) -> None:
        self.runner = runner
        self.out = out
        self.inp = inp
        self._write_lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="protocol-writer", daemon=True)
        self._writer.start()
        self._cond = threading.Condition()
        self._pending: list[Any] = []  # runner Jobs with images still to schedule
        self._jobs: dict[str, Any] = {}  # job id -> Job, until finished
        self._draining = False
        self._eof = False
        self._out_broken = False

    # ------------------------------------------------------------------------------------------ output

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the writer thread; never waits for the bot. Events are emitted from the batch
        thread (progress) and the PNG pool (results, under the runner's job lock): writing there would stall
        denoising whenever the bot's event loop is slow to read a result's megabytes off the pipe (measured:
        9 % of the engine's throughput under load, BENCHMARKS.md 2026-12-03). The queue holds at most the
        events of the jobs this worker was given (the bot bounds those by its slots)."""
        if not self._out_broken:
            self._outbox.put(event)

    def _write_loop(self) -> None:
        while (event := self._outbox.get()) is not None:
            with self._write_lock:
                if self._out_broken:
                    continue
                try:
                    write_frame(self.out, event)
                except (BrokenPipeError, OSError, ValueError):
                    self._out_broken = True
                    log.warning("protocol output closed; dropping events")

    def _finish_writing(self, timeout: float) -> None:
        """Write out every event emitted so far (within ``timeout``), then stop the writer thread."""
        self._outbox.put(None)
        self._writer.join(timeout)

    # ------------------------------------------------------------------------------------------- input

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    message = read_frame(self.inp)
                except ProtocolError as exc:
                    log.error("bad frame on stdin (%s); treating it as the end of the stream", exc)
                    break
                except (OSError, ValueError):
                    break
                if message is None:
                    break
                self._handle(message)
        finally:
            with self._cond:
                self._eof = True
                self.runner.abort()
                self._cond.notify_all()

    def _handle(self, message: Any) -> None:
        if isinstance(message, Submit):
            self._submit(message)
        elif isinstance(message, Cancel):
            with self._cond:
                job = self._jobs.get(message.job_id)
                if job is None:
                    log.info("cancel for unknown or finished job %s ignored", message.job_id)
                    return
                self.runner.cancel(job, self.emit)
                self._prune()
        elif isinstance(message, Shutdown):
            with self._cond:
                self._draining = True
                self._cond.notify_all()
        else:
            log.warning("ignoring unexpected %s on stdin", type(message).__name__)

    def _submit(self, message: Submit) -> None:
        from engine.runner import RequestError

        request = message.request
        with self._cond:
            if self._draining:
                self.emit(JobFailed(request.job_id, "worker is shutting down", retryable=True))
                return
            existing = self._jobs.get(request.job_id)
            if existing is not None and not existing.finished:
                self.emit(JobFailed(request.job_id, f"job {request.job_id} is already queued on this worker"))
                return
        try:
            job = self.runner.prepare(request)
        except RequestError as exc:
            self.emit(JobFailed(request.job_id, str(exc)))
            return
        except Exception as exc:
            log.exception("could not prepare job %s", request.job_id)
            self.emit(JobFailed(request.job_id, f"bad request: {exc}"))
            return
        job.emit = self.emit
        with self._cond:
            self._jobs[request.job_id] = job
            self._pending.append(job)
            self._cond.notify_all()

    def _prune(self) -> None:
        """Drop finished jobs and fully scheduled ones from the queue (caller holds ``_cond``)."""
        self._pending = [j for j in self._pending if not j.finished and j.remaining > 0]
        self._jobs = {k: j for k, j in self._jobs.items() if not j.finished}

    # ------------------------------------------------------------------------------------------- serve

    def serve(self) -> int:
        runner = self.runner
        self.emit(
            WorkerReady(
                worker_id=runner.worker_id,
                model=runner.model_name,
                device=runner.device_name,
                pid=os.getpid(),
                max_batch=runner.max_batch,
            )
        )
        reader = threading.Thread(target=self._read_loop, name="stdin-reader", daemon=True)
        reader.start()
        while True:
            with self._cond:
                self._prune()
                while not self._pending and not self._draining and not self._eof:
                    self._cond.wait()
                    self._prune()
                if self._eof or self._draining:
                    break
                batch = runner.plan(self._pending)
            if batch:
                runner.run_batch(batch, self.emit)
        runner.wait_idle(timeout=60)  # images already rendered still go out
        with self._cond:
            for job in list(self._jobs.values()):
                runner.fail(job, "worker is shutting down", self.emit, retryable=True)
        self._finish_writing(timeout=60)
        try:
            with self._write_lock:
                self.out.flush()
        except OSError:
            pass
        runner.close()
        return 0


def runner_from_args(args: Any, worker_id: str) -> Any:
    """The engine's Runner configured by the model flags every worker shares (``worker`` and ``serve``)."""
    from engine.runner import Runner

    return Runner(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.max_batch,
        models_dir=args.models_dir,
        allow_pickle=args.allow_pickle,
        single_file_config=args.single_file_config,
        taesd=args.taesd,
        taesdxl=args.taesdxl,
        lora_dir=args.lora_dir,
        embeddings_dir=getattr(args, "embeddings_dir", None),
        safety_checker=args.safety_checker,
        compile=args.compile,
        cpu_offload=args.cpu_offload,
        channels_last=args.channels_last,
        worker_id=worker_id,
        cache_models=args.model_cache,
        cache_ram=args.model_cache_ram,
        cache_gb=args.model_cache_gb,
    )


def run_worker(args: Any) -> int:
    """Entry point of ``python -m engine worker`` (``args`` from the CLI parser)."""
    if not sys.stdin.isatty():
        # Driven by the bot, which stops its workers itself (Shutdown, then the end of stdin). A Ctrl-C in
        # the bot's terminal reaches the whole process group: a worker dying of KeyboardInterrupt mid-batch
        # would leave its jobs unreported and its traceback in the bot's log. (By hand, Ctrl-C still works.)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = claim_stdout()
    setup_engine_logging(os.environ, os.getpid())
    from engine.loading import ModelLoadError

    try:
        runner = runner_from_args(args, args.worker_id or f"{os.uname().nodename}-{os.getpid()}")
    except (ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"engine: cannot start: {exc}", file=sys.stderr)
        return 2
    worker = Worker(runner, out, sys.stdin.buffer)
    code = worker.serve()
    # The stdin reader may still be blocked in read() (after Shutdown): a normal interpreter exit would wait
    # on its buffer lock, so flush what matters and leave at once.
    for stream in (out, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
