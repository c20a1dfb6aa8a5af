"""A loopback Discord: REST (``/api/v10``) and gateway (``/gateway``) on one aiohttp server.

The real, unmodified discord.py client logs into it (see ``plugin.connected_client``). State and rules
live in :class:`~tests.fakediscord.state.World`; this module adds HTTP, the websocket protocol, user
actions (``invoke``, ``click``, ``react`` ...) and failure injection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from .state import (
    ADD_REACTIONS,
    ATTACH_FILES,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    ApiError,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeRole,
    FakeUser,
    Upload,
    World,
    as_int,
    invalid_form,
    walk_components,
)

log = logging.getLogger("fakediscord")

MAX_REQUEST_BODY = 25 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Gateway intents (bits) needed per dispatch; the second value applies to DMs.
INTENT_GUILDS = 1 << 0
INTENT_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_REACTIONS = 1 << 10
INTENT_DM_MESSAGES = 1 << 12
INTENT_DM_REACTIONS = 1 << 13
INTENT_MESSAGE_CONTENT = 1 << 15
EVENT_INTENTS: dict[str, tuple[int, int]] = {
    "GUILD_CREATE": (INTENT_GUILDS, 0),
    "CHANNEL_CREATE": (INTENT_GUILDS, 0),
    "GUILD_ROLE_CREATE": (INTENT_GUILDS, 0),
    "GUILD_MEMBER_ADD": (INTENT_MEMBERS, 0),
    "MESSAGE_CREATE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_UPDATE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_DELETE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_REACTION_ADD": (INTENT_GUILD_REACTIONS, INTENT_DM_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (INTENT_GUILD_REACTIONS, INTENT_DM_REACTIONS),
}


def json_response(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py only decodes JSON when the header matches verbatim, and
    # web.json_response would append "; charset=utf-8".
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def error_response(err: ApiError) -> web.Response:
    return json_response(err.body(), err.status)


def _no_content() -> web.Response:
    return web.Response(status=204)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    retry_after: float
    times: int


class _Connection:
    """One websocket. Frames go through a queue drained by a single writer task, so frames queued from
    synchronous code (world building) keep their order and sequence numbers."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while True:
            frame = await self.outbox.get()
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(json.dumps(frame))
            except ConnectionError:
                return

    def send(self, frame: dict[str, Any]) -> None:
        self.outbox.put_nowait(frame)

    async def close(self) -> None:
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.writer


class _Session:
    """A gateway session (IDENTIFY .. until forgotten). Keeps recent dispatches so RESUME can replay."""

    def __init__(self, session_id: str, intents: int) -> None:
        self.id = session_id
        self.intents = intents
        self.seq = 0
        self.conn: _Connection | None = None
        self.replay: deque[dict[str, Any]] = deque(maxlen=1000)

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        frame = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.replay.append(frame)
        if self.conn is not None:
            self.conn.send(frame)


class FakeDiscord(World):
    """A loopback Discord. Build the world with ``add_*``, connect a bot, act with ``invoke``/``click``/
    ``react``, observe ``messages``/``interactions``/``commands_for``, inject faults with ``fail_next``."""

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
                    body = {
                        "message": "You are being rate limited.",
                        "retry_after": failure.retry_after,
                        "global": False,
                        "code": failure.code,
                    }
                    resp = json_response(body, 429)
                    resp.headers["Via"] = "1.1 google"
                    resp.headers["Retry-After"] = str(max(1, round(failure.retry_after)))
                    resp.headers["X-RateLimit-Scope"] = "user"
                    return resp
                return json_response(
                    {"code": failure.code, "message": f"injected {failure.status}"}, failure.status
                )
        return None

    # ------------------------------------------------------------------------------------ middleware
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)  # gateway and attachment downloads
        try:
            if (request.content_length or 0) > MAX_REQUEST_BODY:
                raise ApiError(413, 40005, "Request entity too large")
            # Webhook and interaction-callback routes are authorised by the token in the URL instead.
            needs_auth = not re.match(r"/api/v\d+/(webhooks|interactions)/", request.path)
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            response = self._injected_failure(request) or await handler(request)
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
        self.requests.append((request.method, request.path, response.status))
        self._changed()
        return response

    # --------------------------------------------------------------------------------------- routes
    def _routes(self, app: web.Application) -> None:
        api = "/api/v{version:\\d+}"
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/attachments/{id}/{filename}", self._download)
        r.add_get(f"{api}/gateway", self._get_gateway)
        r.add_get(f"{api}/gateway/bot", self._get_gateway)
        r.add_get(f"{api}/users/@me", self._get_me)
        r.add_get(f"{api}/users/{{user_id:\\d+}}", self._get_user)
        r.add_post(f"{api}/users/@me/channels", self._create_dm)
        r.add_get(f"{api}/oauth2/applications/@me", self._get_application)
        for path in ("/applications/{app}/commands", "/applications/{app}/guilds/{guild_id}/commands"):
            r.add_put(api + path, self._put_commands)
            r.add_get(api + path, self._get_commands)
        r.add_post(f"{api}/interactions/{{interaction_id}}/{{token}}/callback", self._callback)
        r.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        r.add_get(f"{api}/webhooks/{{app}}/{{token}}/messages/{{message_id}}", self._webhook_get)
        r.add_patch(f"{api}/webhooks/{{app}}/{{token}}/messages/{{message_id}}", self._webhook_edit)
        r.add_delete(f"{api}/webhooks/{{app}}/{{token}}/messages/{{message_id}}", self._webhook_delete)
        ch = f"{api}/channels/{{channel_id}}"
        r.add_get(ch, self._get_channel)
        r.add_get(f"{ch}/messages", self._list_messages)
        r.add_post(f"{ch}/messages", self._post_message)
        r.add_get(f"{ch}/messages/{{message_id}}", self._get_message)
        r.add_patch(f"{ch}/messages/{{message_id}}", self._patch_message)
        r.add_delete(f"{ch}/messages/{{message_id}}", self._delete_message)
        reaction = f"{ch}/messages/{{message_id}}/reactions/{{emoji}}"
        r.add_put(f"{reaction}/@me", self._put_reaction)
        r.add_delete(f"{reaction}/{{user}}", self._delete_reaction)
        r.add_get(reaction, self._list_reaction_users)
        g = f"{api}/guilds/{{guild_id}}"
        r.add_get(g, self._get_guild)
        r.add_get(f"{g}/channels", self._get_guild_channels)
        r.add_get(f"{g}/roles", self._get_roles)
        r.add_get(f"{g}/members/{{user_id}}", self._get_member)
        r.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.Response:
        # Deliberately loud: a 404 here means the fake lacks a route the bot uses.
        log.warning("fakediscord: no route for %s %s", request.method, request.path)
        self.unknown_routes.append((request.method, request.path))
        return json_response({"code": 0, "message": "404: Not Found"}, 404)

    async def _download(self, request: web.Request) -> web.Response:
        att = self.attachments.get(as_int(request.match_info["id"]))
        if att is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})

    # ------------------------------------------------------------------------------ request helpers
    async def _read_body(self, request: web.Request) -> tuple[Any, list[Upload]]:
        """JSON body, or multipart ``payload_json`` + ``files[n]`` parts."""
        if request.content_type.startswith("multipart/"):
            payload: Any = {}
            uploads: list[Upload] = []
            reader = await request.multipart()
            total = 0
            async for part in reader:
                name = part.name or ""
                if name == "payload_json":
                    payload = json.loads(await part.text())
                elif m := re.fullmatch(r"files\[(\d+)\]", name):
                    data = await part.read(decode=False)
                    total += len(data)
                    if total > MAX_REQUEST_BODY:  # chunked uploads carry no Content-Length
                        raise ApiError(413, 40005, "Request entity too large")
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    uploads.append(
                        Upload(int(m.group(1)), part.filename or f"file{m.group(1)}", bytes(data), ctype)
                    )
            return payload, uploads
        raw = await request.read()
        return (json.loads(raw) if raw else {}), []

    def _channel(self, request: web.Request) -> FakeChannel:
        channel = self.channels.get(as_int(request.match_info["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _channel_message(self, request: web.Request, channel: FakeChannel) -> FakeMessage:
        # Ephemeral messages are invisible to channel routes, as on Discord.
        msg = self.get_message(as_int(request.match_info["message_id"]))
        if msg is None or msg.deleted or msg.ephemeral or msg.channel_id != channel.id:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _guild(self, request: web.Request) -> FakeGuild:
        guild = self.guilds.get(as_int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    def _require(self, channel: FakeChannel, perms: int) -> None:
        """The bot's permission check for channel routes (interaction responses bypass these)."""
        if channel.guild_id is None:
            return
        have = self.guilds[channel.guild_id].permissions_for(self.bot_user.id)
        if have & perms != perms:
            raise ApiError(403, 50013, "Missing Permissions")

    # ----------------------------------------------------------------------------- users / gateway
    async def _get_gateway(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        return json_response(
            {**self.bot_user.to_json(), "verified": True, "mfa_enabled": False, "locale": "en-US"}
        )

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(as_int(request.match_info["user_id"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(user.to_json())

    async def _create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self._read_body(request)
        user = self.users.get(as_int(body.get("recipient_id")))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(self.dm_channel(user).to_json())

    async def _get_application(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.app_owner.to_json(),
                "verify_key": "0" * 64,
                "team": None,
                "flags": 0,
                "rpc_origins": [],
                "interactions_endpoint_url": None,
                "bot": self.bot_user.to_json(),
            }
        )

    # -------------------------------------------------------------------------- application commands
    def _command_pool(self, request: web.Request) -> tuple[list[dict[str, Any]], int | None]:
        if request.match_info["app"] != str(self.application_id):
            raise ApiError(404, 10002, "Unknown Application")
        if "guild_id" not in request.match_info:
            return self.global_commands, None
        guild = self._guild(request)
        return self.guild_commands.setdefault(guild.id, []), guild.id

    async def _put_commands(self, request: web.Request) -> web.Response:
        pool, guild_id = self._command_pool(request)
        body, _ = await self._read_body(request)
        names = [(c.get("type", 1), c["name"]) for c in body]
        if len(set(names)) != len(names):
            raise invalid_form(
                "name", "Application command names must be unique", "APPLICATION_COMMANDS_DUPLICATE_NAME"
            )
        # Bulk overwrite: commands keep their id when name and type match, like Discord.
        old_ids = {(c.get("type", 1), c["name"]): c["id"] for c in pool}
        new = []
        for cmd in body:
            new.append(
                {
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    **cmd,
                    "id": old_ids.get((cmd.get("type", 1), cmd["name"])) or str(self.snowflake()),
                    "application_id": str(self.application_id),
                    "type": cmd.get("type", 1),
                    "version": str(self.snowflake()),
                    **({"guild_id": str(guild_id)} if guild_id else {}),
                }
            )
        pool[:] = new
        return json_response(new)

    async def _get_commands(self, request: web.Request) -> web.Response:
        return json_response(self._command_pool(request)[0])

    # ---------------------------------------------------------------------------------- interactions
    async def _callback(self, request: web.Request) -> web.Response:
        inter = self.interactions.get(as_int(request.match_info["interaction_id"]))
        if inter is None or inter.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        body, uploads = await self._read_body(request)
        if inter.callbacks:
            inter.rejected.append((40060, body))
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - inter.created_at > self.interaction_deadline:
            inter.late = True
            inter.rejected.append((10062, body))
            inter._responded.set()
            raise ApiError(404, 10062, "Unknown interaction")
        try:
            message = self._apply_callback(inter, body, uploads)
        except ApiError as err:
            inter.rejected.append((err.code, body))
            raise
        inter.callbacks.append(body)
        inter._responded.set()
        original = inter.original
        result: dict[str, Any] = {
            "interaction": {
                "id": str(inter.id),
                "type": inter.type,
                "response_message_id": str(original.id) if original else None,
                "response_message_loading": bool(original and original.loading),
                "response_message_ephemeral": bool(original and original.ephemeral),
            },
            "resource": {"type": body.get("type")},
        }
        if message is not None:
            result["resource"]["message"] = self.message_json(message)
        return json_response(result)

    def _apply_callback(
        self, inter: FakeInteraction, body: dict[str, Any], uploads: list[Upload]
    ) -> FakeMessage | None:
        """Carry out an initial response; returns the message for ``resource.message`` (types 4 and 7)."""
        kind, data = body.get("type"), body.get("data") or {}
        channel = self.channels[inter.channel_id]
        message: FakeMessage | None = None
        component_ok = inter.message is not None  # types 6/7 only make sense on a component's message
        if kind == 4:
            message = self.create_message(
                channel, self.bot_user, data, uploads, interaction=inter, msg_type=_reply_type(inter)
            )
            inter.original = message
        elif kind == 5:
            loading = FLAG_LOADING | ((data.get("flags") or 0) & FLAG_EPHEMERAL)
            msg_type = _reply_type(inter)
            inter.original = self.create_message(
                channel, self.bot_user, {}, [], interaction=inter, msg_type=msg_type, extra_flags=loading
            )
        elif kind == 6 and component_ok:
            inter.original = inter.message
        elif kind == 7 and component_ok:
            self.edit_message(inter.message, data, uploads)  # type: ignore[arg-type]
            inter.original = message = inter.message
        elif kind == 8 and inter.type == 4:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise invalid_form("data.choices", "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
            inter.autocomplete_choices = choices
        elif kind == 9 and inter.type in (2, 3):
            inter.modal = data
        elif kind == 1:
            pass
        else:
            raise invalid_form("type", f"Interaction response type {kind} is not valid for this interaction")
        return message

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        """The interaction behind a webhook token, with Discord's token rules applied."""
        inter = self._by_token.get(request.match_info["token"])
        if request.match_info["app"] != str(self.application_id) or inter is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        if inter.expired or time.monotonic() - inter.created_at > self.token_lifetime:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not inter.callbacks:  # never acknowledged (or acknowledged too late): the webhook never existed
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    def _webhook_message(self, request: web.Request, inter: FakeInteraction) -> FakeMessage:
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            msg = inter.original
        else:
            msg = next((m for m in [inter.original, *inter.followups] if m and str(m.id) == message_id), None)
        if msg is None or msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def _followup(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        payload, uploads = await self._read_body(request)
        original = inter.original
        if original is not None and original.loading and inter.callbacks[0]["type"] == 5:
            # After a "thinking" defer the first followup fills in the deferred message (Discord keeps the
            # defer's ephemerality), so it is both the original and the first followup.
            self.edit_message(original, {k: v for k, v in payload.items() if k != "flags"}, uploads)
            msg = original
        else:
            channel = self.channels[inter.channel_id]
            msg = self.create_message(channel, self.bot_user, payload, uploads, interaction=inter)
        inter.followups.append(msg)
        if request.query.get("wait", "").lower() not in ("1", "true"):
            return _no_content()
        return json_response(self.message_json(msg))

    async def _webhook_get(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        return json_response(self.message_json(self._webhook_message(request, inter)))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        msg = self._webhook_message(request, inter)
        payload, uploads = await self._read_body(request)
        self.edit_message(msg, payload, uploads)
        return json_response(self.message_json(msg))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        self.delete_message(self._webhook_message(request, inter))
        return _no_content()

    # -------------------------------------------------------------------------------------- channels
    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).to_json())

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        msgs = sorted(self.channel_messages(channel), key=lambda m: m.id, reverse=True)
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
        limit = min(int(request.query.get("limit", 50)), 100)
        return json_response([self.message_json(m) for m in msgs[:limit]])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        payload, uploads = await self._read_body(request)
        self._require(channel, VIEW_CHANNEL | SEND_MESSAGES | (ATTACH_FILES if uploads else 0))
        if (payload.get("flags") or 0) & FLAG_EPHEMERAL:
            raise invalid_form("flags", "Only interaction responses can be ephemeral.")
        msg = self.create_message(channel, self.bot_user, payload, uploads)
        return json_response(self.message_json(msg))

    async def _get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        return json_response(self.message_json(self._channel_message(request, channel)))

    async def _patch_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        if msg.author_id != self.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        payload, uploads = await self._read_body(request)
        self.edit_message(msg, payload, uploads)
        return json_response(self.message_json(msg))

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        if msg.author_id != self.bot_user.id:
            self._require(channel, MANAGE_MESSAGES)
        self.delete_message(msg)
        return _no_content()

    async def _put_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY | ADD_REACTIONS)
        msg = self._channel_message(request, channel)
        self.add_reaction(msg, unquote(request.match_info["emoji"]), self.bot_user)
        return _no_content()

    async def _delete_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        who = request.match_info["user"]
        user = self.bot_user if who == "@me" else self.users.get(as_int(who))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        if user is not self.bot_user:
            self._require(channel, MANAGE_MESSAGES)
        self.remove_reaction(msg, unquote(request.match_info["emoji"]), user)
        return _no_content()

    async def _list_reaction_users(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._channel_message(request, channel)
        ids = sorted(msg.reactions.get(unquote(request.match_info["emoji"]), set()))
        return json_response([self.users[i].to_json() for i in ids])

    # ---------------------------------------------------------------------------------------- guilds
    async def _get_guild(self, request: web.Request) -> web.Response:
        return json_response(self.guild_json(self._guild(request)))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([c.to_json() for c in self._guild(request).channels.values()])

    async def _get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.to_json() for r in self._guild(request).roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        member = self._guild(request).members.get(as_int(request.match_info["user_id"]))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member.to_json())

    # --------------------------------------------------------------------------------------- gateway
    def _emit(self, event: str, data: dict[str, Any] | Callable[[int], dict[str, Any]]) -> None:
        for session in self._sessions.values():
            payload = data(session.intents) if callable(data) else data
            if self._wants(session.intents, event, payload):
                session.dispatch(event, self._filter_content(session.intents, event, payload))

    def _wants(self, intents: int, event: str, data: dict[str, Any]) -> bool:
        guild_bit, dm_bit = EVENT_INTENTS.get(event, (0, 0))
        needed = guild_bit if data.get("guild_id") or event.startswith("GUILD") else dm_bit
        return not needed or bool(intents & needed)

    def _filter_content(self, intents: int, event: str, data: dict[str, Any]) -> dict[str, Any]:
        # Without MESSAGE_CONTENT, other users' guild messages arrive with content etc. blanked.
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or intents & INTENT_MESSAGE_CONTENT:
            return data
        if not data.get("guild_id") or data.get("author", {}).get("id") == str(self.bot_user.id):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    def _ready(self, session: _Session) -> dict[str, Any]:
        return {
            "v": 10,
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "user": {**self.bot_user.to_json(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "application": {"id": str(self.application_id), "flags": 0},
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "user_settings": {},
        }

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws)
        self._connections.add(conn)
        conn.send({"op": 10, "d": {"heartbeat_interval": 41250}})
        session: _Session | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, d = frame.get("op"), frame.get("d")
                if op == 1:
                    conn.send({"op": 11})
                elif op == 2:
                    if d.get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    detached = [k for k, v in self._sessions.items() if v.conn is None]
                    for key in detached[:-3]:
                        del self._sessions[key]
                    session = _Session(secrets.token_hex(16), int(d.get("intents") or 0))
                    self._sessions[session.id] = session
                    session.conn = conn
                    self.identifies += 1
                    session.dispatch("READY", self._ready(session))
                    for guild in self.guilds.values():
                        session.dispatch("GUILD_CREATE", self.guild_create_json(guild, session.intents))
                    self._changed()
                elif op == 6:
                    old = self._sessions.get(d.get("session_id"))
                    if old is None or d.get("token") != self.token:
                        conn.send({"op": 9, "d": False})
                        continue
                    session = old
                    session.conn = conn
                    for replayed in [f for f in old.replay if f["s"] > (d.get("seq") or 0)]:
                        conn.send(replayed)
                    session.dispatch("RESUMED", {})
                elif op == 8 and session is not None:
                    guild = self.guilds.get(as_int(d.get("guild_id")))
                    if guild is not None:
                        chunk = {
                            "guild_id": str(guild.id),
                            "members": [m.to_json() for m in guild.members.values()],
                            "chunk_index": 0,
                            "chunk_count": 1,
                            "nonce": d.get("nonce"),
                        }
                        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
        finally:
            self._connections.discard(conn)
            if session is not None and session.conn is conn:
                # Stays resumable: discord.py's own close() sends 4000 on the wire, so a clean shutdown
                # cannot be told apart from a drop. Old detached sessions are pruned on IDENTIFY.
                session.conn = None
            await conn.close()
        return ws

    @property
    def connected(self) -> bool:
        """Whether a bot currently holds a live gateway connection."""
        return any(s.conn is not None for s in self._sessions.values())

    async def disconnect_bots(self, *, code: int = 4000, invalidate: bool = False) -> None:
        """Drop every gateway connection, like a Discord hiccup. discord.py reconnects and RESUMEs
        (events dispatched meanwhile are replayed); with ``invalidate`` the resume is refused (op 9) and
        the client IDENTIFYs afresh (discord.py waits 5 s before a non-initial IDENTIFY)."""
        if invalidate:
            self._sessions.clear()
        for conn in list(self._connections):
            await conn.ws.close(code=code, message=b"fakediscord: disconnect")

    # ---------------------------------------------------------------------------------- user actions
    def _base_interaction(
        self, kind: int, guild: FakeGuild | None, channel: FakeChannel, user: FakeUser, locale: str
    ) -> dict[str, Any]:
        """Every key discord.py reads from INTERACTION_CREATE, for a user in a guild channel or a DM."""
        data: dict[str, Any] = {
            "id": str(self.snowflake()),
            "application_id": str(self.application_id),
            "type": kind,
            "token": secrets.token_urlsafe(48),
            "version": 1,
            "channel_id": str(channel.id),
            "locale": locale,
            "attachment_size_limit": self.attachment_size_limit,
            "entitlements": [],
            "entitlement_sku_ids": [],
        }
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise ValueError(f"{user.username} is not a member of {guild.name}; call add_member first")
            perms = guild.permissions_for(user.id)
            app_perms = guild.permissions_for(self.bot_user.id)
            data.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                channel={**channel.to_json(), "permissions": str(perms)},
                member=member.to_json(permissions=perms),
                app_permissions=str(app_perms),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            data.update(
                channel=channel.to_json(),
                user=user.to_json(),
                app_permissions=str(ATTACH_FILES | SEND_MESSAGES | VIEW_CHANNEL | ADD_REACTIONS),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        return data

    async def _start_interaction(
        self,
        payload: dict[str, Any],
        channel: FakeChannel,
        user: FakeUser,
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        if not self.connected:
            log.warning("fakediscord: dispatching an interaction with no bot connected")
        inter = FakeInteraction(
            id=int(payload["id"]),
            token=payload["token"],
            type=payload["type"],
            created_at=time.monotonic(),
            guild_id=channel.guild_id,
            channel_id=channel.id,
            user=user,
            payload=payload,
            message=message,
        )
        self.interactions[inter.id] = inter
        self._by_token[inter.token] = inter
        self._emit("INTERACTION_CREATE", payload)
        self._changed()
        return inter

    def _command_data(
        self,
        name: str,
        options: dict[str, Any],
        *,
        guild: FakeGuild | None,
        subcommand: str | None,
        group: str | None,
        attachments: dict[str, tuple[str, bytes, str]],
        focused: str | None = None,
    ) -> dict[str, Any]:
        """``data`` of a slash-command (or autocomplete) interaction, typed by the schema the bot PUT."""
        cmd = self.find_command(name, guild)
        if cmd is None:
            registered = [
                c["name"]
                for c in self.global_commands + self.guild_commands.get(guild.id if guild else 0, [])
            ]
            raise LookupError(
                f"/{name} is not registered (registered: {registered}); did the bot sync its tree?"
            )
        schema, path = cmd.get("options") or [], [name]
        for sub_name, sub_type in ((group, 2), (subcommand, 1)):
            if sub_name is None:
                continue
            sub = next((o for o in schema if o["name"] == sub_name and o["type"] == sub_type), None)
            if sub is None:
                raise ValueError(
                    f"/{' '.join(path)} has no {'group' if sub_type == 2 else 'subcommand'} {sub_name!r}"
                )
            schema, path = sub.get("options") or [], [*path, sub_name]
        if any(o["type"] in (1, 2) for o in schema):
            raise ValueError(f"/{' '.join(path)} needs a subcommand: {[o['name'] for o in schema]}")
        resolved: dict[str, dict[str, Any]] = {}
        built = []
        for opt_name, value in [*options.items(), *attachments.items()]:
            spec = next((o for o in schema if o["name"] == opt_name), None)
            if spec is None:
                raise ValueError(
                    f"/{' '.join(path)} has no option {opt_name!r}: {[o['name'] for o in schema]}"
                )
            if opt_name == focused:
                built.append({"name": opt_name, "type": spec["type"], "value": str(value), "focused": True})
            else:
                built.append(self._option(spec["type"], opt_name, value, guild, resolved))
        given = {o["name"] for o in built}
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in given]
        if missing and focused is None:
            raise ValueError(f"/{' '.join(path)} is missing required options {missing}")
        for sub_name, sub_type in ((subcommand, 1), (group, 2)):
            if sub_name is not None:
                built = [{"name": sub_name, "type": sub_type, "options": built}]
        data: dict[str, Any] = {"id": cmd["id"], "name": name, "type": 1, "options": built}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]  # discord.py looks the command up in that guild's tree
        if resolved:
            data["resolved"] = resolved
        return data

    def _option(
        self, kind: int, name: str, value: Any, guild: FakeGuild | None, resolved: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        if kind == 11:  # attachment: (filename, bytes, content_type) or an existing FakeAttachment
            att = value if isinstance(value, FakeAttachment) else self.make_attachment(*value)
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_json()
            return {"name": name, "type": 11, "value": str(att.id)}
        if kind in (6, 9) and not isinstance(value, FakeRole):  # user (or mentionable user)
            user = getattr(value, "user", value)
            user = user if isinstance(user, FakeUser) else self.users[int(user)]
            resolved.setdefault("users", {})[str(user.id)] = user.to_json()
            member = guild.members.get(user.id) if guild else None
            if member is not None and guild is not None:
                perms = guild.permissions_for(user.id)
                resolved.setdefault("members", {})[str(user.id)] = member.to_json(
                    with_user=False, permissions=perms
                )
            return {"name": name, "type": kind, "value": str(user.id)}
        if kind in (8, 9):
            resolved.setdefault("roles", {})[str(value.id)] = value.to_json()
            return {"name": name, "type": kind, "value": str(value.id)}
        if kind == 7:
            resolved.setdefault("channels", {})[str(value.id)] = {
                **value.to_json(),
                "permissions": str(2**53 - 1),
            }
            return {"name": name, "type": 7, "value": str(value.id)}
        cast = {3: str, 4: int, 5: bool, 10: float}.get(kind, lambda v: v)
        return {"name": name, "type": kind, "value": cast(value)}

    async def invoke(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        guild: FakeGuild | None,
        channel: FakeChannel,
        user: FakeUser,
        subcommand: str | None = None,
        group: str | None = None,
        attachments: dict[str, tuple[str, bytes, str]] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A user runs ``/name [group] [subcommand] options...``. Options are typed from the registered
        schema; users/members/roles/channels/attachments go into ``data.resolved``."""
        payload = self._base_interaction(2, guild, channel, user, locale)
        payload["data"] = self._command_data(
            name,
            options or {},
            guild=guild,
            subcommand=subcommand,
            group=group,
            attachments=attachments or {},
        )
        return await self._start_interaction(payload, channel, user)

    async def autocomplete(
        self,
        name: str,
        focused: str,
        value: str,
        options: dict[str, Any] | None = None,
        *,
        guild: FakeGuild | None,
        channel: FakeChannel,
        user: FakeUser,
        subcommand: str | None = None,
        group: str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A user types ``value`` into option ``focused``; the bot's choices land in
        ``interaction.autocomplete_choices`` (await ``wait_response()`` first)."""
        payload = self._base_interaction(4, guild, channel, user, locale)
        payload["data"] = self._command_data(
            name,
            {**(options or {}), focused: value},
            guild=guild,
            subcommand=subcommand,
            group=group,
            attachments={},
            focused=focused,
        )
        return await self._start_interaction(payload, channel, user)

    async def click(
        self, message: FakeMessage, custom_id: str, *, user: FakeUser, values: list[str] | None = None
    ) -> FakeInteraction:
        """A user clicks a button (or picks ``values`` in a select menu) on ``message``."""
        comp = next((c for c in walk_components(message.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise ValueError(
                f"message {message.id} has no component {custom_id!r}: {message.button_custom_ids()}"
            )
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        channel = self.channels[message.channel_id]
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        payload = self._base_interaction(3, guild, channel, user, "en-US")
        payload["data"] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp["type"] != 2:
            payload["data"]["values"] = list(values or [])
        payload["message"] = self.message_json(message)
        return await self._start_interaction(payload, channel, user, message)

    async def submit_modal(
        self,
        interaction: FakeInteraction,
        values: dict[str, str | list[str]],
        *,
        user: FakeUser | None = None,
    ) -> FakeInteraction:
        """A user submits the modal the bot opened in answer to ``interaction`` (callback type 9).
        ``values`` maps custom_id -> text (text inputs) or list of values (selects); inputs left out
        are submitted empty."""
        if interaction.modal is None:
            raise ValueError(f"interaction {interaction.id} did not open a modal")

        def answer(comp: dict[str, Any]) -> dict[str, Any]:
            # Mirror the modal's layout (action rows or labels) with submitted values in the inputs.
            if comp.get("type") == 1:
                return {"type": 1, "components": [answer(c) for c in comp.get("components") or []]}
            if comp.get("type") == 18:
                return {"type": 18, "component": answer(comp["component"])}
            value = values.get(comp.get("custom_id", ""), "" if comp.get("type") == 4 else [])
            key = "value" if comp.get("type") == 4 else "values"
            return {"type": comp.get("type"), "custom_id": comp.get("custom_id"), key: value}

        user = user or interaction.user
        channel = self.channels[interaction.channel_id]
        guild = self.guilds.get(interaction.guild_id) if interaction.guild_id else None
        payload = self._base_interaction(5, guild, channel, user, "en-US")
        components = [answer(c) for c in interaction.modal.get("components") or []]
        payload["data"] = {"custom_id": interaction.modal["custom_id"], "components": components}
        if interaction.message is not None:
            payload["message"] = self.message_json(interaction.message)
        return await self._start_interaction(payload, channel, user, interaction.message)

    async def react(self, message: FakeMessage, emoji: str, *, user: FakeUser) -> None:
        """``user`` adds ``emoji`` (unicode, or ``"name:id"`` for a custom one): MESSAGE_REACTION_ADD."""
        self.add_reaction(message, emoji, user)

    async def unreact(self, message: FakeMessage, emoji: str, *, user: FakeUser) -> None:
        self.remove_reaction(message, emoji, user)

    async def say(self, channel: FakeChannel, content: str, *, user: FakeUser, **payload: Any) -> FakeMessage:
        """``user`` posts a plain message (MESSAGE_CREATE)."""
        return self.create_message(channel, user, {"content": content, **payload}, [])


def _reply_type(inter: FakeInteraction) -> int:
    return 20 if inter.type == 2 else 0  # CHAT_INPUT_COMMAND for slash commands, DEFAULT otherwise
