"""Engine workers for the tests, forked from one process that has already imported torch, diffusers and
transformers (a "zygote", as Android and multiprocessing's forkserver do it).

Why: a tiny-model engine worker spends ~10 s of its ~11 s start importing those libraries (transformers
alone scans its thousand model folders), and the suite starts about a hundred workers on 2 cores. The
worker itself is unchanged: the forked child runs ``python -m engine``'s own ``main`` with the command line,
environment, working folder and standard streams of the process the bot started.

- ``python -m tests.enginefork serve SOCKET``: the zygote. Imports the engine's libraries, then listens on a
  Unix socket; per request it forks a child, tells the client the child's pid and, when it ends, its status.
- The client is the "python" the bot starts (``ENGINE_PYTHON``, a script written by :func:`client_script`):
  it hands its stdin/stdout/stderr to the zygote (SCM_RIGHTS), forwards SIGTERM/SIGINT/SIGHUP to the
  child, and exits as the child did (killed by the same signal, or with its code). A SIGKILLed client
  closes its socket, and the child kills itself at once: a test that SIGKILLs a worker sees it die.
  Without a zygote (not started yet, or gone) the client simply execs the real Python: nothing depends on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

SOCKET_ENV = "IMAGINEBOT_TEST_ENGINE_FORK"
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- client


def client_script(folder: Path) -> Path:
    """An executable that stands in for ``python`` when the bot starts ``python -m engine ...``."""
    path = folder / "engine-python"
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.enginefork import client_main\n"
        "client_main()\n"
    )
    path.chmod(0o755)
    return path


def engine_python() -> str:
    """The Python to start ``-m engine ...`` with in a test: the fork client once the session set it up."""
    return os.environ.get("ENGINE_PYTHON") or sys.executable


def _exec_real_python() -> None:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])


def client_main() -> None:
    where = os.environ.get(SOCKET_ENV)
    if not where or sys.argv[1:3] != ["-m", "engine"]:
        _exec_real_python()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(where))
    except OSError:
        _exec_real_python()  # the zygote is still importing, or gone
    request = {"argv": sys.argv[3:], "env": dict(os.environ), "cwd": os.getcwd()}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    # The child holds the bot's pipes now; this process must not keep them open (EOF would never come).
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    reader = conn.makefile("rb")
    started = reader.readline()
    if not started:
        sys.exit(1)
    child = int(json.loads(started)["pid"])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    ended = reader.readline()
    code = int(json.loads(ended)["code"]) if ended else 1
    if code < 0:  # killed by a signal: end the same way, so the bot reads the same exit status
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# --------------------------------------------------------------------------------------------- zygote


def _warm() -> None:
    """Import what every engine worker imports when it loads a model and runs a job."""
    import pkgutil
    from importlib import import_module

    import engine
    from engine import loading
    from engine.families import Family

    for module in pkgutil.iter_modules(engine.__path__):
        if module.name != "__main__":
            import_module(f"engine.{module.name}")
    for family in Family:
        loading._pipeline_class(family)
    import diffusers
    import transformers

    for name in ("StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline", "AutoencoderKL"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "CLIPTokenizerFast"):
        getattr(transformers, name)


def _run_child(conn: socket.socket, fds: list[int], request: dict[str, object]) -> None:
    """In the forked child: become the worker the client would have exec'd. Never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(request["cwd"]))
        import random

        random.seed()  # not the zygote's sequence in every child

        def die_with_the_client() -> None:
            while conn.recv(64):
                pass
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=die_with_the_client, daemon=True).start()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))  # torch read the zygote's value at import
        argv = request["argv"]
        assert isinstance(argv, list)
        sys.argv = ["python -m engine", *map(str, argv)]
        from engine.__main__ import main

        code = main([str(a) for a in argv])
    except SystemExit as exc:  # as the interpreter reads it: None is success, a message is failure
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _serve_one(conn: socket.socket) -> None:
    message, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
    if len(fds) != 3:
        conn.close()
        return
    request = json.loads(message.decode())
    pid = os.fork()
    if pid == 0:
        _run_child(conn, fds, request)
    for fd in fds:
        os.close(fd)

    def report() -> None:
        with conn:
            try:
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except OSError:
                pass
            _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass  # the client is gone (SIGKILLed): the child saw it and died too

    threading.Thread(target=report, daemon=True).start()


def serve(where: str) -> None:
    _warm()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(where + ".tmp")
    os.rename(where + ".tmp", where)  # clients connect only once the imports are done
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            _serve_one(conn)  # forks in the main thread: no other thread is mid-import when it does
        except Exception:
            conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.enginefork serve SOCKET")
