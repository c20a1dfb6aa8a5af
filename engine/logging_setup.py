"""Log records out, for the bot and the engine alike: text for a terminal or one JSON object a line
(``LOG_FORMAT=json``) for a log shipper, secrets scrubbed either way. Standard library only: the bot
imports it too."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping

LOG_FORMATS = ("text", "json")


class RedactFilter(logging.Filter):
    """Scrubs the given secrets (a bot token, a NATS password) from every record, whoever logs it
    (discord.py, aiohttp, nats-py, our own tracebacks), so a secret never reaches a terminal or a log file."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self._pattern = re.compile("|".join(re.escape(s) for s in secrets if s)) if any(secrets) else None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if self._pattern.search(message) or (record.exc_text and self._pattern.search(record.exc_text)):
            record.msg = self._pattern.sub("***", message)
            record.args = None
            if record.exc_text:
                record.exc_text = self._pattern.sub("***", record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exc`` (the
    traceback, or null), and ``process`` for engine workers that share the bot's stream."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_text
        if record.exc_info and not exc:
            exc = self.formatException(record.exc_info)
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "exc": exc or None,
        }
        if self.process:
            line["process"] = self.process
        return json.dumps(line, ensure_ascii=False)


def log_handler(
    fmt: str, text_format: str, *secrets: str, datefmt: str | None = None, process: str = ""
) -> logging.Handler:
    """A stderr handler in ``fmt`` ("text": ``text_format``; "json": :class:`JsonFormatter`)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(text_format, datefmt))
    handler.addFilter(RedactFilter(*secrets))
    return handler


def setup_engine_logging(environ: Mapping[str, str], pid: int) -> None:
    """An engine process's logging: ``ENGINE_LOG_LEVEL`` (INFO), ``LOG_FORMAT`` (text or json); the NATS
    password and token of its environment scrubbed."""
    fmt = environ.get("LOG_FORMAT", "text").strip().lower()
    handler = log_handler(
        fmt if fmt in LOG_FORMATS else "text",
        f"%(asctime)s engine[{pid}] %(levelname)s %(name)s: %(message)s",
        environ.get("NATS_PASSWORD", ""),
        environ.get("NATS_TOKEN", ""),
        process=f"engine[{pid}]",
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(environ.get("ENGINE_LOG_LEVEL", "INFO").strip().upper() or "INFO")
