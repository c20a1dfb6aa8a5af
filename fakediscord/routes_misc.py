"""The fake's remaining REST routes: gateway info, users and DMs, the application, application commands,
guilds; plus attachment (CDN) downloads, which wait ``latency.cdn``.

A mixin of :class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .limits import Latency
from .models import ApiError, FakeAttachment, FakeChannel, FakeGuild, FakeUser, as_int, invalid_form
from .wire import json_response, read_body

Adder = Callable[[str, str, Callable[..., Any], str], None]


class MiscRoutes:
    """Needs from the fake: the world and the latency settings."""

    application_id: int
    bot_user: FakeUser
    app_owner: FakeUser
    if TYPE_CHECKING:  # read-only: a property of the fake that mixes this in

        @property
        def gateway_url(self) -> str: ...

    latency: Latency
    users: dict[int, FakeUser]
    guilds: dict[int, FakeGuild]
    attachments: dict[int, FakeAttachment]
    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]
    snowflake: Callable[[], int]
    dm_channel: Callable[[FakeUser], FakeChannel]
    guild_json: Callable[[FakeGuild], dict[str, Any]]

    def _misc_routes(self, add: Adder) -> None:
        add("GET", "/gateway", self._get_gateway, "users")
        add("GET", "/gateway/bot", self._get_gateway, "users")
        add("GET", "/users/@me", self._get_me, "users")
        add("GET", "/users/{user_id:\\d+}", self._get_user, "users")
        add("POST", "/users/@me/channels", self._create_dm, "users")
        add("GET", "/oauth2/applications/@me", self._get_application, "users")
        for path in ("/applications/{app}/commands", "/applications/{app}/guilds/{guild_id}/commands"):
            add("PUT", path, self._put_commands, "commands")
            add("GET", path, self._get_commands, "commands")
        g = "/guilds/{guild_id}"
        add("GET", g, self._get_guild, "guilds")
        add("GET", f"{g}/channels", self._get_guild_channels, "guilds")
        add("GET", f"{g}/roles", self._get_roles, "guilds")
        add("GET", f"{g}/members/{{user_id}}", self._get_member, "guilds")

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
        body, _ = await read_body(request)
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
        body, _ = await read_body(request)
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

    # ---------------------------------------------------------------------------------------- guilds
    async def _get_guild(self, request: web.Request) -> web.Response:
        return json_response(self.guild_json(self._guild(request)))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        channels = self._guild(request).channels.values()
        return json_response([c.to_json() for c in channels if not c.is_thread])

    async def _get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.to_json() for r in self._guild(request).roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        member = self._guild(request).members.get(as_int(request.match_info["user_id"]))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member.to_json())

    def _guild(self, request: web.Request) -> FakeGuild:
        guild = self.guilds.get(as_int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    # ------------------------------------------------------------------------------------------ CDN
    async def _download(self, request: web.Request) -> web.Response:
        if self.latency.cdn:
            await asyncio.sleep(self.latency.cdn)
        att = self.attachments.get(as_int(request.match_info["id"]))
        if att is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})
