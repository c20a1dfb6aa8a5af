import asyncio
import inspect
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

# One compute thread per torch process: the suite runs the bot, engine workers and the test process side
# by side on CI's 2 cores, and oversubscribed torch threads made runs 3-10x slower there (BENCHMARKS.md).
# Set before anything imports torch; engine workers the tests spawn inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["fakediscord.plugin", "tests.pg"]  # tests.pg: a real PostgreSQL server


# ------------------------------------------------------------------------------------------------------
# Tasks a test leaves behind. pytest-asyncio cancels what is left when it closes the test's loop and waits
# for all of it with no limit, so one task that swallows its cancellation hangs the run until the 300 s
# timeout, with thread stacks that say nothing about it. This reaper, torn down after every other fixture of
# an async test, cancels the leftovers itself, waits a bounded time, and names each task that would not
# stop, with its stack, in a warning (``-ra`` shows it); such a task is then taken off the loop's list so
# the loop can close.


REAP_WAIT = 5.0


@pytest.fixture(scope="session", autouse=True)
def _engine_workers_fork(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engine workers the bot starts come forked from a process that has imported their libraries
    (tests/enginefork.py): ~1 s to a ready worker instead of ~10 s. Started in the background; a worker
    started before it is ready runs the ordinary way. ``ENGINE_PYTHON`` reaches bots run in-process
    (``make_settings``) and as subprocesses (inherited)."""
    import subprocess
    import sys

    from tests import enginefork

    folder = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))  # short: a socket path has ~100 bytes
    script = enginefork.client_script(folder)
    try:  # /tmp may be mounted noexec: then workers start the ordinary way
        usable = subprocess.run([script, "-c", "pass"], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        usable = False
    if not usable:
        shutil.rmtree(folder, ignore_errors=True)
        yield
        return
    where = folder / "zygote.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.enginefork", "serve", str(where)],
        cwd=enginefork.ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    os.environ[enginefork.SOCKET_ENV] = str(where)
    os.environ["ENGINE_PYTHON"] = str(script)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight SD 1.5 pipeline folder (engine/tiny.py), built once per test process and
    shared read-only by the engine, bot, fault and bench tests (copy it to change it)."""
    from engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(autouse=True)
def _root_logging_is_restored() -> Iterator[None]:
    """A CLI run in-process (``engine generate``'s ``basicConfig``, ``setup_logging``) adds a root handler
    bound to the sys.stderr of that moment: capsys's stream, closed once its test ends. Left behind, every
    later warning in this xdist process prints a "Logging error" traceback into the next test's stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _tasks_do_not_outlive_their_test(request: pytest.FixtureRequest) -> None:
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_task_reaper")


@pytest_asyncio.fixture
async def _task_reaper():  # type: ignore[no-untyped-def]
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, stuck = await asyncio.wait(left, timeout=REAP_WAIT)
    for task in stuck:
        stack = io.StringIO()
        task.print_stack(file=stack)
        warnings.warn(
            f"task ignored cancellation for {REAP_WAIT:.0f} s: {task!r}\n{stack.getvalue()}",
            stacklevel=1,
        )
        # Private, but the only way to let the loop close: it would wait for this task forever.
        asyncio.tasks._unregister_task(task)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------------
# The tiny SDXL (engine/tiny_sdxl.py), built once per session for engine and bot tests alike: a diffusers
# folder and the same weights as one SGM-layout single file, each with its sidecar (native size 64). The
# single file loads offline with ``single_file_config=tiny_sdxl_dir`` (its architecture is not SDXL base's).


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny_sdxl import make_tiny_sdxl

    return make_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_file(tiny_sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import StableDiffusionXLPipeline

    from engine.checkpoint import save_single_file
    from engine.tiny_sdxl import write_tiny_sidecar

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    path = save_single_file(pipe, tmp_path_factory.mktemp("sdxl-file") / "tiny-sdxl-file.safetensors")
    write_tiny_sidecar(path)
    return path
