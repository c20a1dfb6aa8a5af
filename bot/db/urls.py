"""Database URLs: the two kinds the bot runs on, written the way users write them.

Users write plain ``sqlite:///`` and ``postgresql://`` URLs; the bot is async, so they map to the aiosqlite
and asyncpg drivers. A server URL may carry a password: every error names the URL redacted.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

SQLITE = "sqlite+aiosqlite://"
POSTGRESQL = "postgresql+asyncpg://"
_ALIASES = {
    "sqlite://": SQLITE,
    "postgresql://": POSTGRESQL,
    "postgres://": POSTGRESQL,  # Heroku's and libpq's short spelling
}
EXAMPLES = "sqlite+aiosqlite:///data/bot.db or postgresql+asyncpg://user@host/dbname"


def normalize(raw: str) -> str:
    """``raw`` as an async SQLAlchemy URL for SQLite or PostgreSQL; ValueError (URL redacted) otherwise."""
    value = raw.strip()
    if "://" not in value:
        # Not echoed: without a scheme there is no telling which part is a password.
        raise ValueError(f"expected a database URL such as {EXAMPLES}")
    for alias, driver in _ALIASES.items():
        if value.startswith(alias):
            value = driver + value.removeprefix(alias)
            break
    if not value.startswith((SQLITE, POSTGRESQL)):
        scheme = value.split("://", 1)[0]  # not the rest: a server URL may carry a password
        raise ValueError(f"expected SQLite or PostgreSQL ({EXAMPLES}), got {scheme}://…")
    return value


def password(url: str) -> str:
    """The password inside ``url`` ('' if none), for the log filter that scrubs secrets."""
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:
        return ""
