"""The fake's gateway: websocket sessions (IDENTIFY, RESUME with replay, heartbeats, member chunks) and
the dispatch of world changes to connected bots, filtered by their intents.

A mixin of :class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .models import FakeGuild, FakeUser, as_int

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
    "GUILD_DELETE": (INTENT_GUILDS, 0),
    "CHANNEL_CREATE": (INTENT_GUILDS, 0),
    "CHANNEL_UPDATE": (INTENT_GUILDS, 0),
    "CHANNEL_DELETE": (INTENT_GUILDS, 0),
    "THREAD_CREATE": (INTENT_GUILDS, 0),
    "THREAD_UPDATE": (INTENT_GUILDS, 0),
    "THREAD_DELETE": (INTENT_GUILDS, 0),
    "GUILD_ROLE_CREATE": (INTENT_GUILDS, 0),
    "GUILD_ROLE_UPDATE": (INTENT_GUILDS, 0),
    "GUILD_MEMBER_ADD": (INTENT_MEMBERS, 0),
    "MESSAGE_CREATE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_UPDATE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_DELETE": (INTENT_GUILD_MESSAGES, INTENT_DM_MESSAGES),
    "MESSAGE_REACTION_ADD": (INTENT_GUILD_REACTIONS, INTENT_DM_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (INTENT_GUILD_REACTIONS, INTENT_DM_REACTIONS),
}


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
        await asyncio.wait({self.writer})  # not suppress(CancelledError): that would swallow our own cancel


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


class Gateway:
    """Needs from the fake: token, gateway_url, bot/application identity, guilds, _changed."""

    token: str
    if TYPE_CHECKING:  # read-only: a property of the fake that mixes this in

        @property
        def gateway_url(self) -> str: ...

    bot_user: FakeUser
    application_id: int
    guilds: dict[int, FakeGuild]
    identifies: int
    _sessions: dict[str, _Session]
    _connections: set[_Connection]
    guild_create_json: Callable[[FakeGuild, int], dict[str, Any]]
    _changed: Callable[[], None]

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

    # While True, new gateway connections are refused (HTTP 503), like a gateway outage: with
    # ``disconnect_bots`` it keeps a bot disconnected, retrying with its backoff, until set back.
    refuse_gateway: bool = False

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        if self.refuse_gateway:
            raise web.HTTPServiceUnavailable(text="fakediscord: gateway refused")
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
                    asked = self.guilds.get(as_int(d.get("guild_id")))
                    if asked is not None:
                        chunk = {
                            "guild_id": str(asked.id),
                            "members": [m.to_json() for m in asked.members.values()],
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
