"""Logging set-up. A filter scrubs the bot token from every record, whoever logs it (discord.py,
aiohttp, our own tracebacks), so a secret never reaches a terminal or a log file."""

from __future__ import annotations

import logging
import re


class RedactFilter(logging.Filter):
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


def setup_logging(level: str, *secrets: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactFilter(*secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py's gateway chatter at DEBUG would drown ours.
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))
