"""Interaction routes: the initial callback (with Discord's 3-second deadline, measured on the server when
the request arrives) and the webhook routes behind the interaction token (followups, @original), whose
token lives 15 minutes.

Interaction responses are webhooks: they need neither VIEW_CHANNEL nor SEND_MESSAGES and may always attach
files and embed links, but @everyone, TTS and external emojis follow the bot's permissions in the channel,
overwrites included (see permissions.INTERACTION_SCOPED). A mixin of
:class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .models import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    ApiError,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    Upload,
    as_int,
    invalid_form,
)
from .permissions import ALL_PERMISSIONS
from .wire import ARRIVED, json_response, no_content, read_body

Adder = Callable[[str, str, Callable[..., Any], str], None]


class InteractionRoutes:
    """Needs from the fake: the world, its message rules, and the deadline/lifetime settings."""

    application_id: int
    bot_user: FakeUser
    guilds: dict[int, FakeGuild]
    channels: dict[int, FakeChannel]
    interactions: dict[int, FakeInteraction]
    interaction_deadline: float
    token_lifetime: float
    _by_token: dict[str, FakeInteraction]
    create_message: Callable[..., FakeMessage]
    edit_message: Callable[..., None]
    delete_message: Callable[[FakeMessage], None]
    message_json: Callable[..., dict[str, Any]]

    def _interaction_routes(self, add: Adder) -> None:
        add("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, "interactions")
        add("POST", "/webhooks/{app}/{token}", self._followup, "webhooks")
        message = "/webhooks/{app}/{token}/messages/{message_id}"
        add("GET", message, self._webhook_get, "webhooks")
        add("PATCH", message, self._webhook_edit, "webhooks")
        add("DELETE", message, self._webhook_delete, "webhooks")

    def _response_channel(self, inter: FakeInteraction) -> tuple[FakeChannel, int]:
        """The interaction's channel (gone: 10003) and the bot's permissions there for message content."""
        channel = self.channels.get(inter.channel_id)
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        if channel.guild_id is None:
            return channel, ALL_PERMISSIONS
        return channel, self.guilds[channel.guild_id].permissions_for(self.bot_user.id, channel)

    async def _callback(self, request: web.Request) -> web.Response:
        inter = self.interactions.get(as_int(request.match_info["interaction_id"]))
        if inter is None or inter.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        body, uploads = await read_body(request)
        if inter.callbacks:
            inter.rejected.append((40060, body))
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        # Measured from dispatch to the request's arrival (after any injected latency), as Discord does.
        arrived = request.get(ARRIVED, time.monotonic())
        if arrived - inter.created_at > self.interaction_deadline:
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
        channel, perms = self._response_channel(inter)
        message: FakeMessage | None = None
        component_ok = inter.message is not None  # types 6/7 only make sense on a component's message
        if kind == 4:
            message = self.create_message(
                channel,
                self.bot_user,
                data,
                uploads,
                interaction=inter,
                msg_type=_reply_type(inter),
                perms=perms,
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
            self.edit_message(inter.message, data, uploads, perms=perms)
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
        payload, uploads = await read_body(request)
        channel, perms = self._response_channel(inter)
        original = inter.original
        if (
            original is not None
            and original.loading
            and not original.deleted
            and inter.callbacks[0]["type"] == 5
        ):
            # After a "thinking" defer the first followup fills in the deferred message (Discord keeps the
            # defer's ephemerality), so it is both the original and the first followup. Once the bot deleted
            # that message, a followup is a new message with its own flags (a private refusal after a defer).
            edit = {k: v for k, v in payload.items() if k != "flags"}
            self.edit_message(original, edit, uploads, perms=perms)
            msg = original
        else:
            msg = self.create_message(
                channel, self.bot_user, payload, uploads, interaction=inter, perms=perms
            )
        inter.followups.append(msg)
        if request.query.get("wait", "").lower() not in ("1", "true"):
            return no_content()
        return json_response(self.message_json(msg))

    async def _webhook_get(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        return json_response(self.message_json(self._webhook_message(request, inter)))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        msg = self._webhook_message(request, inter)
        payload, uploads = await read_body(request)
        self.edit_message(msg, payload, uploads, perms=self._response_channel(inter)[1])
        return json_response(self.message_json(msg))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        self.delete_message(self._webhook_message(request, inter))
        return no_content()


def _reply_type(inter: FakeInteraction) -> int:
    return 20 if inter.type == 2 else 0  # CHAT_INPUT_COMMAND for slash commands, DEFAULT otherwise
