"""What users do in the fake Discord: run slash commands, autocomplete, click components, submit
modals, react, post. Each builds the INTERACTION_CREATE (or message) the real Discord would dispatch.

A mixin of :class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .models import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeRole,
    FakeUser,
    walk_components,
)
from .permissions import ADD_REACTIONS, ATTACH_FILES, SEND_MESSAGES, VIEW_CHANNEL

log = logging.getLogger("fakediscord")


class UserActions:
    """Needs from the fake: the world (users, guilds, channels, commands, interactions) and _emit."""

    application_id: int
    attachment_size_limit: int
    bot_user: FakeUser
    users: dict[int, FakeUser]
    guilds: dict[int, FakeGuild]
    channels: dict[int, FakeChannel]
    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]
    interactions: dict[int, FakeInteraction]
    _by_token: dict[str, FakeInteraction]
    if TYPE_CHECKING:  # read-only: a property of the fake that mixes this in

        @property
        def connected(self) -> bool: ...

    snowflake: Callable[[], int]
    find_command: Callable[[str, FakeGuild | None], dict[str, Any] | None]
    make_attachment: Callable[..., FakeAttachment]
    message_json: Callable[..., dict[str, Any]]
    add_reaction: Callable[[FakeMessage, str, FakeUser], None]
    remove_reaction: Callable[[FakeMessage, str, FakeUser], None]
    create_message: Callable[..., FakeMessage]
    _emit: Callable[..., None]
    _changed: Callable[[], None]

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
            # Both computed in the channel, overwrites included, as Discord sends them.
            perms = guild.permissions_for(user.id, channel)
            app_perms = guild.permissions_for(self.bot_user.id, channel)
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
        channel: FakeChannel,
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
                built.append(self._option(spec["type"], opt_name, value, guild, channel, resolved))
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
        self,
        kind: int,
        name: str,
        value: Any,
        guild: FakeGuild | None,
        channel: FakeChannel,
        resolved: dict[str, dict[str, Any]],
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
                perms = guild.permissions_for(user.id, channel)
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
            channel=channel,
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
            channel=channel,
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
