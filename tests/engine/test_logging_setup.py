"""LOG_FORMAT=json: one JSON object a line with time, level, logger, message and exc, secrets scrubbed; the
same handler serves the bot and the engine's processes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from engine.logging_setup import log_handler

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-T0ken.value"


def test_json_lines_carry_the_fields_and_never_a_secret():
    handler = log_handler("json", "%(message)s", SECRET, "")
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("tests.json_lines")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.warning('logging in with %s, line\nbreak and "quotes"', SECRET)
        try:
            raise ValueError(f"refused token {SECRET}")
        except ValueError:
            log.exception("login failed")
        log.info("a plain line")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3  # one object a line, a message's newline escaped inside it
    first, failed, plain = lines
    assert set(first) == {"time", "level", "logger", "message", "exc"}
    assert first["message"] == 'logging in with ***, line\nbreak and "quotes"'
    assert (first["level"], first["logger"], first["exc"]) == ("WARNING", "tests.json_lines", None)
    assert first["time"].endswith("+00:00")
    assert failed["level"] == "ERROR" and failed["message"] == "login failed"
    assert failed["exc"].startswith("Traceback") and "ValueError: refused token ***" in failed["exc"]
    assert plain["message"] == "a plain line" and plain["exc"] is None


def test_an_engine_process_logs_json_without_its_nats_password(tmp_path):
    # A worker whose broker is not there: it logs that it keeps trying; the first line is enough.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LOG_FORMAT": "json",
        "NATS_USER": "imagine",
        "NATS_PASSWORD": SECRET,
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--nats", "nats://127.0.0.1:9",
         "--simulate-seconds-per-step", "0.01", "--worker-id", "json-logs"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait(10)
    line = json.loads(first)
    assert line["process"].startswith("engine[") and line["logger"].startswith("engine")
    assert SECRET not in first
