"""Logging set-up of the bot. A filter scrubs the bot token from every record, whoever logs it (discord.py,
aiohttp, our own tracebacks), so a secret never reaches a terminal or a log file; ``LOG_FORMAT=json`` writes
one JSON object a line (engine/logging_setup.py, shared with the engine's processes)."""

from __future__ import annotations

import logging

from engine.logging_setup import JsonFormatter, RedactFilter, log_handler

__all__ = ["JsonFormatter", "RedactFilter", "setup_logging"]


def setup_logging(level: str, *secrets: str, fmt: str = "text") -> None:
    handler = log_handler(
        fmt, "%(asctime)s %(levelname)-7s %(name)s: %(message)s", *secrets, datefmt="%H:%M:%S"
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py's gateway chatter at DEBUG would drown ours.
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))
