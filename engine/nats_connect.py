"""Reaching the NATS broker, for the bot's transport and the ``engine serve`` workers alike: credentials,
a URL fit for logs, and connect-then-retry until stopped.

Credentials never travel in argv (``ps`` shows it to every local user) and never reach a log line:

- ``NATS_USER`` + ``NATS_PASSWORD``, or ``NATS_TOKEN``, from the environment (or the bot's ``.env``);
- ``NATS_CREDS``: a file holding either a ``.creds`` (user JWT + nkey seed, for operator/account setups;
  made by ``nsc``) or a bare nkey seed (``SU...``, for ``nkey:`` users in the server config). The worker also
  takes it as ``--nats-creds FILE``: a path on the command line is not a secret;
- a password inside ``NATS_URL`` works too (it is environment), but the URL is only ever logged redacted.

It imports nothing heavy: nats-py is imported when connecting.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from engine.urls import redact

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_SECONDS = 2.0
SCHEMES = ("nats", "tls")
_CREDS_JWT = "-----BEGIN NATS USER JWT-----"
_NKEY_SEED = re.compile(rb"\s*(SU[A-Z2-7]{50,})\s*")


class NatsConfigError(ValueError):
    """A NATS URL or credential that cannot work; the message never holds a secret."""


def has_secret(url: str) -> bool:
    """Whether ``url`` carries a password or token (``nats://user:pw@h``, ``nats://token@h``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.password is not None or parts.username is not None


def check_url(url: str) -> str:
    """``url`` if it is a nats:// or tls:// URL; the error names it redacted."""
    value = url.strip().rstrip("/")
    if not any(value.startswith(f"{scheme}://") for scheme in SCHEMES):
        raise NatsConfigError(f"expected a nats:// or tls:// URL, got {redact(value)!r}")
    return value


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How to prove who we are to the broker. ``repr`` never shows a secret."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    creds_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], creds_file: str | Path | None = None) -> NatsAuth:
        """Credentials from ``NATS_USER``/``NATS_PASSWORD``, ``NATS_TOKEN`` and ``NATS_CREDS`` (a given
        ``creds_file`` wins over ``NATS_CREDS``). Raises :class:`NatsConfigError` when they cannot work."""
        creds = creds_file or environ.get("NATS_CREDS", "").strip() or None
        auth = cls(
            user=environ.get("NATS_USER", "").strip(),
            password=environ.get("NATS_PASSWORD", ""),
            token=environ.get("NATS_TOKEN", ""),
            creds_file=Path(creds).expanduser() if creds else None,
        )
        auth.check()
        return auth

    def check(self) -> None:
        if self.password and not self.user:
            raise NatsConfigError("NATS_PASSWORD is set without NATS_USER")
        if sum(map(bool, (self.user, self.token, self.creds_file))) > 1:
            raise NatsConfigError("give one of NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS")
        if self.creds_file is not None:
            self._creds_kind()

    def _creds_kind(self) -> str:
        assert self.creds_file is not None
        try:
            data = self.creds_file.read_bytes()
        except OSError as exc:
            raise NatsConfigError(f"NATS_CREDS: cannot read {self.creds_file}: {exc.strerror}") from None
        if _CREDS_JWT.encode() in data:
            return "creds"
        if _NKEY_SEED.fullmatch(data):
            return "seed"
        raise NatsConfigError(f"NATS_CREDS: {self.creds_file} is neither a .creds file nor an nkey seed")

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        if self.user:
            return {"user": self.user, "password": self.password}
        if self.token:
            return {"token": self.token}
        if self.creds_file is not None:
            path = str(self.creds_file)
            return {"user_credentials": path} if self._creds_kind() == "creds" else {"nkeys_seed": path}
        return {}

    def scrub(self, text: str) -> str:
        """``text`` (an exception's message) with any secret of ours replaced by ``***``."""
        for secret in (self.password, self.token):
            if secret:
                text = text.replace(secret, "***")
        return text


def broker(
    url: str, environ: Mapping[str, str], creds_file: str | Path | None = None
) -> tuple[str, NatsAuth]:
    """The URL to connect to and how to log in, from ``NATS_URL`` and the credential variables (see the
    module's docstring). Credentials written into the URL are moved into the :class:`NatsAuth`, so the URL
    that is kept, passed around and logged holds none. Raises :class:`NatsConfigError` (no secret in it)."""
    url = check_url(url)
    auth = NatsAuth.from_env(environ, creds_file)
    try:
        parts = urlsplit(url)
        user, password, host, port = parts.username, parts.password, parts.hostname or "", parts.port
    except ValueError:
        raise NatsConfigError(f"NATS URL {redact(url)} cannot be parsed") from None
    if user is None and password is None:
        return url, auth
    if auth != NatsAuth():
        raise NatsConfigError("the NATS URL holds credentials and NATS_USER, NATS_TOKEN or NATS_CREDS too")
    if password is None:  # nats://TOKEN@host, as nats-py reads it
        auth = NatsAuth(token=unquote(user or ""))
    else:
        auth = NatsAuth(user=unquote(user or ""), password=unquote(password))
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), auth


def _scrubbed(url: str, auth: NatsAuth, exc: BaseException) -> str:
    text = auth.scrub(str(exc) or type(exc).__name__)
    try:
        password = urlsplit(url).password or urlsplit(url).username
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def connect_with_retry(
    url: str,
    auth: NatsAuth,
    *,
    name: str,
    stop: asyncio.Event,
    lost: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client | None:
    """A connection to ``url``, retried every couple of seconds until it works or ``stop`` is set (then
    ``None``). Once connected, nats-py reconnects by itself for ever; ``lost`` is logged when it must."""
    import nats

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", _scrubbed(url, auth, exc))

    async def on_disconnect() -> None:
        if not stop.is_set():
            log.warning("NATS connection lost; reconnecting (%s)", lost)

    async def on_reconnected() -> None:
        log.info("NATS connection back")
        if on_reconnect is not None:
            await on_reconnect()

    while not stop.is_set():
        # nats-py's connect retries by itself (a server that refuses our login, one not up yet): race it
        # against ``stop`` so a worker told to stop does not wait on a broker it cannot reach.
        connecting = asyncio.ensure_future(
            nats.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnected,
                **auth.connect_options(),
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})  # its CancelledError stays its own
            return None
        try:
            return connecting.result()
        except Exception as exc:
            log.warning(
                "cannot reach NATS at %s (%s); retrying in %g s",
                redact(url),
                _scrubbed(url, auth, exc),
                RETRY_SECONDS,
            )
            await _wait(stop, RETRY_SECONDS)
    return None


async def retry_until_stopped(action: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
    """``await action()``, tried again every couple of seconds while the broker's JetStream is not usable
    (no ``-js``, a cluster electing a leader); ``None`` when ``stop`` is set first."""
    while not stop.is_set():
        try:
            return await action()
        except Exception as exc:
            log.warning("NATS JetStream not usable (%s); is the server run with -js? retrying", exc)
            await _wait(stop, RETRY_SECONDS)
    return None
