"""The values settings are made of: the parsers that turn one environment string into a checked value (each
raises ValueError with a short reason, which bot/settings.py prefixes with the setting's name), the
:class:`Secret` that never prints itself, and :class:`SettingsError`."""

from __future__ import annotations

import re
from collections.abc import Callable

from bot.db import urls as database_urls


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


class Secret:
    """A string that never prints itself (the bot token): repr, str and f-strings show ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---------------------------------------------------------------------------------------------- parsers


def str_(raw: str) -> str:
    return raw.strip()


def secret_(raw: str) -> Secret:
    return Secret(raw.strip())


def int_(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi}, got {value}")
        return value

    return parse


def bool_(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def ids_(raw: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[,\s]+", raw.strip()) if p]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"expected comma-separated numeric Discord ids, got {raw!r}")
    return tuple(int(p) for p in parts)


def url_(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().rstrip("/")
        if not any(value.startswith(s + "://") for s in schemes):
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {value!r}")
        return value

    return parse


def choice_(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def device_(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {raw!r}")
    return value


def namespace_(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError(f"expected 1-64 of A-Z a-z 0-9 _ -, got {raw!r}")
    return value


def log_level_(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return value


def port_(raw: str) -> int | None:
    """Empty: off. 0: a free port the system picks (the bot logs which)."""
    if not raw.strip():
        return None
    return int_(0, 65535)(raw)


def host_(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", value):
        raise ValueError(f"expected a host name or IP address, got {raw!r}")
    return value


def database_url_(raw: str) -> str:
    return database_urls.normalize(raw)
