"""A loopback Discord: REST (``/api/v10``) and gateway (``/gateway``) on one aiohttp server.

The real, unmodified discord.py client logs into it (see ``plugin.connected_client``). State and rules
live in :class:`~fakediscord.state.World`; routes by area in ``routes_*.py``, the websocket in
``gateway.py``, user actions (``invoke``, ``click``, ``react`` ...) in ``actions.py``, and latency /
rate limits / invalid-request counting in ``limits.py``. This module wires them together and adds
failure injection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from .actions import UserActions
from .faults import Faults
from .gateway import Gateway, _Connection, _Session
from .limits import InvalidRequests, Latency, RateLimits
from .models import ApiError, FakeInteraction
from .routes_channels import ChannelRoutes
from .routes_interactions import InteractionRoutes
from .routes_misc import MiscRoutes
from .routes_threads import ThreadRoutes
from .state import World
from .wire import ARRIVED, MAX_REQUEST_BODY, error_response, json_response

log = logging.getLogger("fakediscord")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INVALID_STATUSES = (401, 403, 429)
# Major parameters: Discord keeps a separate bucket per channel, guild, webhook token or interaction.
MAJOR_PARAMETERS = ("channel_id", "guild_id", "token", "interaction_id")


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    retry_after: float
    times: int


@dataclass
class _RouteInfo:
    route_class: str  # for Latency
    key: str  # "METHOD /path/{param}", for RateLimits


class FakeDiscord(Gateway, UserActions, InteractionRoutes, ChannelRoutes, ThreadRoutes, MiscRoutes, World):
    """A loopback Discord. Build the world with ``add_*`` (threads, forums, overwrites in topology.py),
    connect a bot, act with ``invoke``/``click``/``react``, observe ``messages``/``interactions``/
    ``commands_for``, inject faults with ``fail_next``, and shape the network with ``latency``,
    ``rate_limits`` and ``invalid_requests`` (see limits.py)."""

    def __init__(
        self,
        *,
        token: str = "fake-token",
        attachment_size_limit: int = 10 * 1024 * 1024,
        interaction_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
    ) -> None:
        super().__init__(attachment_size_limit=attachment_size_limit)
        self.token = token
        self.interaction_deadline = interaction_deadline
        self.token_lifetime = token_lifetime
        self.latency = Latency()
        self.rate_limits = RateLimits()
        self.invalid_requests = InvalidRequests()
        self.faults = Faults()  # outages lasting until ended (faults.py)
        self.port = 0
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every REST call
        self.unknown_routes: list[tuple[str, str]] = []  # requests no route matched (the fake lacks one)
        self.internal_errors: list[str] = []  # exceptions inside the fake's handlers (bugs in the fake)
        self.identifies = 0  # how many times a client IDENTIFYed (a bot restart adds one)
        self._sessions: dict[str, _Session] = {}
        self._failures: list[_Failure] = []
        self._by_token: dict[str, FakeInteraction] = {}
        self._runner: web.AppRunner | None = None
        self._connections: set[_Connection] = set()
        self._route_info: dict[AbstractRoute, _RouteInfo] = {}

    # ------------------------------------------------------------------------------------ lifecycle
    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def commands(self) -> dict[str, Any]:
        """Everything the bot registered: ``{"global": [...], "guilds": {guild_id: [...]}}``."""
        return {"global": self.global_commands, "guilds": self.guild_commands}

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=2 * MAX_REQUEST_BODY)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server shutting down"), 1)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---------------------------------------------------------------------------- failure injection
    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        code: int = 0,
        retry_after: float = 0.1,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests matching (``method`` or ``"*"``, regex searched in the
        path) with ``status``. 429s carry ``Via`` and a JSON ``retry_after`` so discord.py retries;
        note discord.py also retries 500/502/504 itself, sleeping 1 s, 3 s, 5 s ... between tries."""
        self._failures.append(
            _Failure(method.upper(), re.compile(path_regex), status, code, retry_after, times)
        )

    def expire_token(self, interaction: FakeInteraction) -> None:
        """Make later webhook calls with this interaction's token answer 401 code 50027."""
        interaction.expired = True

    def _injected_failure(self, request: web.Request) -> web.Response | None:
        for failure in self._failures:
            if failure.method in ("*", request.method) and failure.pattern.search(request.path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                if failure.status == 429:
                    return _too_many(failure.retry_after, failure.code)
                return json_response(
                    {"code": failure.code, "message": f"injected {failure.status}"}, failure.status
                )
        return None

    # ------------------------------------------------------------------------------------ middleware
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)  # gateway and attachment downloads
        info = self._route_info.get(request.match_info.route)
        delay = self.latency.for_route(info.route_class) if info else self.latency.rest
        if delay:
            await asyncio.sleep(delay)
        request[ARRIVED] = time.monotonic()  # what Discord's deadlines are measured against
        headers: dict[str, str] = {}
        try:
            if (request.content_length or 0) > MAX_REQUEST_BODY:
                raise ApiError(413, 40005, "Request entity too large")
            # Webhook and interaction-callback routes are authorised by the token in the URL instead.
            needs_auth = not re.match(r"/api/v\d+/(webhooks|interactions)/", request.path)
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            if self.invalid_requests.banned():
                # Cloudflare's ban: 429 without Via and not JSON, so discord.py does not retry it.
                response: web.StreamResponse = web.Response(status=429, text="error code: 1015")
                self.requests.append((request.method, request.path, 429))
                return response
            response = (
                self._injected_failure(request)
                or self.faults.answer(request)
                or await self._limited(request, info, headers, handler)
            )
        except ApiError as err:
            response = error_response(err)
        except web.HTTPException as exc:
            if exc.status != 404:
                raise
            response = json_response({"code": 0, "message": "404: Not Found"}, 404)
        except Exception as exc:
            # A bug in the fake. Answer 400, not 500: discord.py retries 5xx for ~25 s before giving up.
            log.exception("fakediscord: internal error on %s %s", request.method, request.path)
            self.internal_errors.append(f"{request.method} {request.path}: {exc!r}")
            response = json_response({"code": 0, "message": f"fakediscord internal error: {exc!r}"}, 400)
        response.headers.update(headers)
        self.requests.append((request.method, request.path, response.status))
        if response.status in INVALID_STATUSES:
            self.invalid_requests.record(request.method, request.path, response.status)
        self._changed()
        return response

    async def _limited(
        self, request: web.Request, info: _RouteInfo | None, headers: dict[str, str], handler: Handler
    ) -> web.StreamResponse:
        """Count the request in its bucket (headers go on whatever the handler answers); 429 if over."""
        if info is not None:
            major = next((request.match_info[p] for p in MAJOR_PARAMETERS if p in request.match_info), "")
            verdict = self.rate_limits.hit(info.key, major)
            headers.update(verdict.headers)
            if verdict.retry_after is not None:
                return _too_many(verdict.retry_after)
        return await handler(request)

    # --------------------------------------------------------------------------------------- routes
    def _routes(self, app: web.Application) -> None:
        api = "/api/v{version:\\d+}"

        def add(method: str, path: str, handler: Handler, route_class: str) -> None:
            route = app.router.add_route(method, api + path, handler)
            key = f"{method} {re.sub(r':[^}]*}', '}', path)}"
            self._route_info[route] = _RouteInfo(route_class, key)
            self.rate_limits.known_routes.add(key)

        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{filename}", self._download)
        self._misc_routes(add)
        self._interaction_routes(add)
        self._thread_routes(add)
        self._channel_routes(add)
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.Response:
        # Deliberately loud: a 404 here means the fake lacks a route the bot uses.
        log.warning("fakediscord: no route for %s %s", request.method, request.path)
        self.unknown_routes.append((request.method, request.path))
        return json_response({"code": 0, "message": "404: Not Found"}, 404)


def _too_many(retry_after: float, code: int = 0) -> web.Response:
    """A 429 discord.py honours: JSON ``retry_after`` plus the ``Via`` header (without it discord.py
    takes the 429 for a Cloudflare ban and raises instead of waiting)."""
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": False,
        "code": code,
    }
    response = json_response(body, 429)
    response.headers.update(
        {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "user",
        }
    )
    return response
