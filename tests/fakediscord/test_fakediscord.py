"""Self-tests: the real discord.py client against the fake, end to end."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from types import SimpleNamespace

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from fakediscord import FakeDiscord
from fakediscord.cached import text_channel_of


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 32


PNG = tiny_png()


class AgainView(discord.ui.View):
    """Persistent: timeout=None and a fixed custom_id, registered with bot.add_view in setup_hook."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="persist:again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(f"again for {interaction.user.id}", ephemeral=True)

    @discord.ui.button(label="Done", custom_id="persist:done")
    async def done(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="done", view=None)  # type 7

    @discord.ui.button(label="Quiet", custom_id="persist:quiet")
    async def quiet(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # type 6 on a component: @original is the clicked message
        await interaction.edit_original_response(content="quietly edited")


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(label="Text", custom_id="fb:text")

    def __init__(self) -> None:
        super().__init__(custom_id="fb")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"got {self.text.value}")


def build_bot() -> tuple[commands.Bot, SimpleNamespace]:
    bot = commands.Bot(
        command_prefix=commands.when_mentioned, intents=discord.Intents.default(), guild_ready_timeout=0.05
    )
    seen = SimpleNamespace(errors=[], reactions=[], release=asyncio.Event(), sent=[])

    async def setup_hook() -> None:
        bot.add_view(AgainView())
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]  # a per-instance hook: discord.py calls self.setup_hook()

    @bot.event
    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        seen.reactions.append(payload)

    @bot.tree.command(name="imagine", description="Make art")
    async def imagine(interaction: discord.Interaction, prompt: str, steps: int = 20) -> None:
        await interaction.response.defer(thinking=True)
        file = discord.File(io.BytesIO(PNG), "out.png")
        await interaction.followup.send(f"{prompt} x{steps}", file=file, view=AgainView())

    @bot.tree.command(name="secret", description="Ephemeral")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("psst", ephemeral=True)

    @bot.tree.command(name="slow", description="Answers after a delay")
    async def slow(interaction: discord.Interaction, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await interaction.response.send_message("finally")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @bot.tree.command(name="later", description="Defers, then follows up when released")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await seen.release.wait()
        try:
            await interaction.followup.send("done")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @bot.tree.command(name="upload", description="Uploads size bytes")
    async def upload(interaction: discord.Interaction, size: int) -> None:
        await interaction.response.defer()
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(b"x" * size), "blob.bin"))
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @bot.tree.command(name="post", description="Posts to the channel and reacts")
    async def post(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message("ok", ephemeral=True)
        assert isinstance(interaction.channel, discord.TextChannel)
        message = await interaction.channel.send(text)
        seen.sent.append(message)
        await message.add_reaction("👍")

    @bot.tree.command(name="remix", description="Reads an attachment")
    async def remix(interaction: discord.Interaction, image: discord.Attachment) -> None:
        data = await image.read()
        await interaction.response.send_message(f"{image.filename} {len(data)} {data == PNG}")

    @bot.tree.command(name="feedback", description="Opens a modal")
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @bot.tree.command(name="replace", description="Sends a file, then edits in a second one")
    async def replace(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("v1", file=discord.File(io.BytesIO(b"A"), "a.txt"))
        first = (await interaction.original_response()).attachments[0]
        new = discord.File(io.BytesIO(b"B"), "b.txt")
        v2 = await interaction.edit_original_response(content="v2", attachments=[first, new])
        await interaction.edit_original_response(content="v3", attachments=[v2.attachments[1]])

    @bot.tree.command(name="style", description="Autocompleted")
    async def style(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(name)

    @style.autocomplete("name")
    async def style_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in ("anime", "photo", "painting") if current in s]

    return bot, seen


def where(world: SimpleNamespace, user: object = None) -> dict:
    return {"guild": world.guild, "channel": world.channel, "user": user or world.member}


async def test_login_ready_and_guilds(fake_discord: FakeDiscord, discord_world, discord_client) -> None:
    bot, _ = build_bot()
    async with discord_client(bot):
        assert bot.user is not None and bot.user.id == fake_discord.bot_user.id
        guild = bot.get_guild(discord_world.guild.id)
        assert guild is not None and guild.name == "Test Guild"
        assert {c.name for c in guild.text_channels} == {"general", "art-nsfw"}
        assert text_channel_of(bot, discord_world.nsfw_channel.id).nsfw
        assert guild.me is not None and guild.owner_id == discord_world.owner.id
        names = {c["name"] for c in fake_discord.commands_for(None)}
        assert {"imagine", "secret", "remix", "style"} <= names
        assert all(
            c["id"] and c["application_id"] == str(fake_discord.application_id)
            for c in fake_discord.commands_for()
        )


async def test_world_changes_after_connect_reach_bot(fake_discord, discord_world, discord_client) -> None:
    intents = discord.Intents.default()
    intents.members = True
    intents.message_content = True
    async with discord_client(intents=intents) as bot:
        said = await fake_discord.say(discord_world.channel, "hello bot", user=discord_world.member)
        message = await bot.wait_for("message", check=lambda m: m.id == said.id, timeout=5)
        assert message.content == "hello bot" and message.author.id == discord_world.member.id
        guild = bot.get_guild(discord_world.guild.id)
        assert guild.get_member(discord_world.admin.id).guild_permissions.manage_guild
        assert not guild.get_member(discord_world.member.id).guild_permissions.manage_guild
        new_channel = fake_discord.add_channel(discord_world.guild, "late-channel")
        newcomer = discord_world.new_member("newcomer")
        await fake_discord.wait_until(
            lambda: guild.get_channel(new_channel.id) and guild.get_member(newcomer.id), 5
        )
        second = fake_discord.add_guild("Second Guild")
        await fake_discord.wait_until(lambda: bot.get_guild(second.id) is not None, 5)


async def test_gateway_resume_replays_missed_events(fake_discord, discord_world, discord_client) -> None:
    bot, seen = build_bot()
    msg = fake_discord.create_message(discord_world.channel, fake_discord.bot_user, {"content": "hi"}, [])
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    bot.add_listener(on_resumed)
    async with discord_client(bot):
        await fake_discord.disconnect_bots()
        await fake_discord.react(msg, "🎉", user=discord_world.member)  # dispatched while disconnected
        await fake_discord.wait_until(lambda: resumed.is_set() and seen.reactions, 5)
        assert fake_discord.identifies == 1
        # (disconnect_bots(invalidate=True) works too, but discord.py sleeps 5 s before a re-IDENTIFY.)
        inter = await fake_discord.invoke("secret", **where(discord_world))
        await inter.wait_response(5)


async def test_slash_command_defer_then_followup_with_file(
    fake_discord, discord_world, discord_client
) -> None:
    bot, _ = build_bot()
    async with discord_client(bot):
        inter = await fake_discord.invoke("imagine", {"prompt": "a cat", "steps": 5}, **where(discord_world))
        msg = await fake_discord.wait_for_message(
            lambda m: m.interaction_id == inter.id and bool(m.attachments), 5
        )
        assert inter.callbacks[0]["type"] == 5 and inter.deferred and not inter.ephemeral and not inter.late
        assert msg is inter.original and inter.followups == [msg] and not msg.loading
        assert msg.content == "a cat x5" and msg.button_custom_ids() == [
            "persist:again",
            "persist:done",
            "persist:quiet",
        ]
        att = msg.attachments[0]
        assert (att.filename, att.content_type, att.data, att.size) == ("out.png", "image/png", PNG, len(PNG))
        async with aiohttp.ClientSession() as session, session.get(att.url) as resp:
            assert await resp.read() == PNG
        assert fake_discord.channel_messages(discord_world.channel) == [msg]


async def test_ephemeral_response_recorded(fake_discord, discord_world, discord_client) -> None:
    async with discord_client(build_bot()[0]):
        inter = await fake_discord.invoke("secret", **where(discord_world))
        await inter.wait_response(5)
        assert inter.ephemeral and inter.original.ephemeral and inter.original.content == "psst"
        assert fake_discord.channel_messages(discord_world.channel) == []


async def test_persistent_button_click_without_cache(fake_discord, discord_world, discord_client) -> None:
    # A message from "before the bot started": nothing about it is in the client's cache.
    buttons = [
        {"type": 2, "style": 1, "label": n, "custom_id": f"persist:{n}"} for n in ("again", "done", "quiet")
    ]
    components = [{"type": 1, "components": buttons}]
    old = fake_discord.create_message(
        discord_world.channel, fake_discord.bot_user, {"content": "old", "components": components}, []
    )
    async with discord_client(build_bot()[0]):
        inter = await fake_discord.click(old, "persist:again", user=discord_world.member)
        await inter.wait_response(5)
        assert inter.original.content == f"again for {discord_world.member.id}" and inter.ephemeral
        with pytest.raises(ValueError):
            await fake_discord.click(old, "nope", user=discord_world.member)
        quiet = await fake_discord.click(old, "persist:quiet", user=discord_world.member)
        await fake_discord.wait_until(lambda: old.content == "quietly edited", 5)
        assert quiet.callbacks == [{"type": 6}] and quiet.original is old
        done = await fake_discord.click(old, "persist:done", user=discord_world.admin)
        await done.wait_response(5)
        assert done.callbacks[0]["type"] == 7 and old.content == "done" and old.components == []


async def test_modal_and_attachment_edits(fake_discord, discord_world, discord_client) -> None:
    async with discord_client(build_bot()[0]):
        inter = await fake_discord.invoke("feedback", **where(discord_world))
        await inter.wait_response(5)
        assert inter.modal["custom_id"] == "fb" and inter.callbacks[0]["type"] == 9
        submitted = await fake_discord.submit_modal(inter, {"fb:text": "nice"})
        await submitted.wait_response(5)
        assert submitted.original.content == "got nice"

        inter = await fake_discord.invoke("replace", **where(discord_world))
        await fake_discord.wait_until(lambda: inter.original and inter.original.content == "v3", 5)
        assert [a.data for a in inter.original.attachments] == [b"B"] and inter.original.edits == 2


async def test_wrong_token_fails_login(fake_discord, discord_client) -> None:
    with pytest.raises(discord.LoginFailure):
        async with discord_client(token="not-the-token"):
            pass


async def test_reaction_dispatch(fake_discord, discord_world, discord_client) -> None:
    bot, seen = build_bot()
    msg = fake_discord.create_message(
        discord_world.channel, fake_discord.bot_user, {"content": "react me"}, []
    )
    async with discord_client(bot):
        await fake_discord.react(msg, "🔁", user=discord_world.member)
        await fake_discord.wait_until(lambda: seen.reactions, 5)
        payload = seen.reactions[0]
        assert (payload.user_id, payload.message_id, str(payload.emoji)) == (
            discord_world.member.id,
            msg.id,
            "🔁",
        )
        assert payload.member is not None and msg.reactions == {"🔁": {discord_world.member.id}}


async def test_late_callback_is_unknown_interaction(fake_discord, discord_world, discord_client) -> None:
    fake_discord.interaction_deadline = 0.2
    bot, seen = build_bot()
    async with discord_client(bot):
        inter = await fake_discord.invoke("slow", {"delay": 0.4}, **where(discord_world))
        await inter.wait_response(5)
        await fake_discord.wait_until(lambda: seen.errors, 5)
        assert inter.late and not inter.callbacks and seen.errors[0].code == 10062


async def test_expired_token_is_401_50027(fake_discord, discord_world, discord_client) -> None:
    bot, seen = build_bot()
    async with discord_client(bot):
        inter = await fake_discord.invoke("later", **where(discord_world))
        await inter.wait_response(5)
        fake_discord.expire_token(inter)
        seen.release.set()
        await fake_discord.wait_until(lambda: seen.errors, 5)
        assert (seen.errors[0].status, seen.errors[0].code) == (401, 50027)


async def test_429_on_reaction_is_retried(fake_discord, discord_world, discord_client) -> None:
    bot, seen = build_bot()
    fake_discord.fail_next("PUT", r"/reactions/", status=429, retry_after=0.05)
    async with discord_client(bot):
        await fake_discord.invoke("post", {"text": "hello"}, **where(discord_world))
        msg = await fake_discord.wait_for_message(lambda m: m.content == "hello" and bool(m.reactions), 5)
        assert msg.reactions == {"👍": {fake_discord.bot_user.id}} and seen.sent[0].id == msg.id
        statuses = [s for m, p, s in fake_discord.requests if m == "PUT" and "/reactions/" in p]
        assert statuses == [429, 204]


async def test_attachment_over_limit_is_413(fake_discord, discord_world, discord_client) -> None:
    fake_discord.attachment_size_limit = 1000
    bot, seen = build_bot()
    async with discord_client(bot):
        inter = await fake_discord.invoke("upload", {"size": 2000}, **where(discord_world))
        await fake_discord.wait_until(lambda: seen.errors, 5)
        assert (seen.errors[0].status, seen.errors[0].code) == (413, 40005)
        assert inter.original.loading and not inter.original.attachments


async def test_attachment_option_and_autocomplete(fake_discord, discord_world, discord_client) -> None:
    async with discord_client(build_bot()[0]):
        inter = await fake_discord.invoke(
            "remix", attachments={"image": ("in.png", PNG, "image/png")}, **where(discord_world)
        )
        await inter.wait_response(5)
        assert inter.original.content == f"in.png {len(PNG)} True"
        ac = await fake_discord.autocomplete("style", "name", "p", **where(discord_world))
        await ac.wait_response(5)
        assert [c["value"] for c in ac.autocomplete_choices] == ["photo", "painting"]
        with pytest.raises(ValueError, match="missing required"):
            await fake_discord.invoke("remix", **where(discord_world))


async def test_bot_restart_sees_world_and_edits_old_message(
    fake_discord, discord_world, discord_client
) -> None:
    async with discord_client(build_bot()[0]):
        await fake_discord.invoke("post", {"text": "before restart"}, **where(discord_world))
        old = await fake_discord.wait_for_message(
            lambda m: m.content == "before restart" and bool(m.reactions), 5
        )
    bot2, _ = build_bot()
    async with discord_client(bot2):
        assert fake_discord.identifies == 2
        channel = text_channel_of(bot2, discord_world.channel.id)
        await channel.get_partial_message(old.id).edit(content="after restart")
        assert old.content == "after restart" and old.edits == 1
        fetched = await channel.fetch_message(old.id)
        assert fetched.content == "after restart" and str(fetched.reactions[0].emoji) == "👍"


async def test_rest_rules(fake_discord: FakeDiscord, discord_world) -> None:
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    url = f"{fake_discord.api_base}/channels/{discord_world.channel.id}/messages"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{fake_discord.api_base}/users/@me", headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        async with s.get(f"{fake_discord.api_base}/users/@me", headers={"Authorization": "Bot wrong"}) as r:
            assert r.status == 401
        async with s.get(f"{fake_discord.api_base}/nope", headers=headers) as r:
            assert r.status == 404 and (await r.json())["message"] == "404: Not Found"
        assert fake_discord.unknown_routes == [("GET", "/api/v10/nope")]
        six_rows = [
            {"type": 1, "components": [{"type": 2, "style": 1, "custom_id": f"b{i}"}]} for i in range(6)
        ]
        bad_id = [{"type": 1, "components": [{"type": 2, "style": 1, "custom_id": "x" * 101}]}]
        for body in (
            {"content": "x" * 2001},
            {"content": "x", "components": six_rows},
            {"components": bad_id},
        ):
            async with s.post(url, json=body, headers=headers) as r:
                assert r.status == 400 and (await r.json())["code"] == 50035
        async with s.post(url, json={}, headers=headers) as r:
            assert (await r.json())["code"] == 50006
