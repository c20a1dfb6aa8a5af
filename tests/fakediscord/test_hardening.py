"""Self-tests for the fake's realism knobs (issue #11): latency and Discord's 3 s deadline, channel permission
overwrites (channel routes and interaction responses), replies, history pagination, threads and forums,
guild/channel deletion, rate limits and the invalid-request count. All through the real discord.py client."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import aiohttp
import discord
import pytest
from discord.ext import commands

from fakediscord import (
    ADMINISTRATOR,
    ATTACH_FILES,
    MANAGE_THREADS,
    MENTION_EVERYONE,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    USE_EXTERNAL_EMOJIS,
    VIEW_CHANNEL,
    FakeDiscord,
)
from fakediscord.cached import guild_of, text_channel_of, thread_of

GUILD_READY = 0.05


def make_bot() -> tuple[commands.Bot, SimpleNamespace]:
    intents = discord.Intents.default()
    bot = commands.Bot(
        command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=GUILD_READY
    )
    seen = SimpleNamespace(errors=[], events=[], app_permissions=[])

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]  # a per-instance hook: discord.py calls self.setup_hook()

    @bot.tree.command(name="fetch_first", description="Downloads the image, then answers (wrong order)")
    async def fetch_first(interaction: discord.Interaction, image: discord.Attachment) -> None:
        data = await image.read()
        try:
            await interaction.response.send_message(f"read {len(data)}")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @bot.tree.command(name="defer_first", description="Defers, then downloads (right order)")
    async def defer_first(interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer()
        data = await image.read()
        await interaction.followup.send(f"read {len(data)}")

    @bot.tree.command(name="ping", description="Answers at once")
    async def ping(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.send_message("pong")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @bot.tree.command(name="loud", description="Answers with a file, @everyone and an external emoji")
    async def loud(interaction: discord.Interaction) -> None:
        seen.app_permissions.append(interaction.app_permissions)
        file = discord.File(io.BytesIO(b"png"), "a.png")
        await interaction.response.send_message("@everyone <:blob:123> first", file=file)
        await interaction.edit_original_response(content="@everyone <:blob:123> edited")
        await interaction.followup.send(
            "@everyone <:blob:123> more", file=discord.File(io.BytesIO(b"x"), "b.png")
        )

    for name in ("on_guild_remove", "on_guild_channel_delete", "on_thread_create", "on_thread_delete"):

        async def listener(*args: object, _name: str = name) -> None:
            seen.events.append((_name, args[0]))

        bot.add_listener(listener, name)
    return bot, seen


def where(world: SimpleNamespace, channel: object = None) -> dict:
    return {"guild": world.guild, "channel": channel or world.channel, "user": world.member}


# ------------------------------------------------------------------------------------ latency, deadline
async def test_cdn_latency_kills_an_interaction_that_downloads_before_deferring(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    # Real Discord's 3 s: a handler that downloads a 3.5 s attachment first answers too late.
    assert fake_discord.interaction_deadline == 3.0
    bot, seen = make_bot()
    async with discord_client(bot):
        fake_discord.latency.cdn = 3.5
        image = {"image": ("in.png", b"\x89PNG" + b"0" * 60, "image/png")}
        late, ok = await asyncio.gather(
            fake_discord.invoke("fetch_first", attachments=image, **where(discord_world)),
            fake_discord.invoke("defer_first", attachments=image, **where(discord_world)),
        )
        await fake_discord.wait_until(lambda: seen.errors and ok.original and not ok.original.loading, 15)
        assert late.late and not late.callbacks and late.rejected[0][0] == 10062
        assert seen.errors[0].code == 10062 and seen.errors[0].status == 404
        assert ok.deferred and ok.original is not None and ok.original.content == "read 64"


async def test_rest_latency_per_route_class_counts_toward_the_deadline(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    fake_discord.interaction_deadline = 0.3
    bot, seen = make_bot()
    async with discord_client(bot):
        fake_discord.latency.interactions = 0.5  # only the callback route is slow
        late = await fake_discord.invoke("ping", **where(discord_world))
        await fake_discord.wait_until(lambda: seen.errors, 5)
        assert late.late and seen.errors[0].code == 10062
        fake_discord.latency.interactions = None  # changed mid-test: back to latency.rest (0)
        fake_discord.interaction_deadline = 3.0  # Discord's; 0.3 s would make the good case load-dependent
        fine = await fake_discord.invoke("ping", **where(discord_world))
        await fine.wait_response(5)
        assert fine.original is not None and fine.original.content == "pong" and not fine.late
        with pytest.raises(AttributeError):
            fake_discord.latency.interaction = 1.0  # type: ignore[attr-defined]  # typo: not silently ignored


# ------------------------------------------------------------------------------------------ permissions
async def test_overwrites_are_computed_like_discord(fake_discord: FakeDiscord, discord_world) -> None:
    guild, channel, member = discord_world.guild, discord_world.channel, discord_world.member
    helper = fake_discord.add_role(guild, "helper")
    helped = fake_discord.add_member(guild, fake_discord.add_user("helped"), roles=[helper]).user
    fake_discord.set_overwrite(channel, guild.everyone, deny=SEND_MESSAGES | ATTACH_FILES)
    fake_discord.set_overwrite(channel, helper, allow=SEND_MESSAGES)
    perms = fake_discord.permissions_in
    assert not perms(channel, member) & SEND_MESSAGES  # @everyone's deny
    assert perms(channel, helped) & SEND_MESSAGES and not perms(channel, helped) & ATTACH_FILES  # role allow
    fake_discord.set_overwrite(channel, helped, deny=SEND_MESSAGES)
    assert not perms(channel, helped) & SEND_MESSAGES  # the member's own overwrite wins over roles
    fake_discord.set_overwrite(channel, guild.everyone, deny=VIEW_CHANNEL)
    assert perms(channel, member) == 0  # no VIEW_CHANNEL: nothing in the channel
    admin = fake_discord.add_user("root")
    fake_discord.add_member(guild, admin, permissions=ADMINISTRATOR)
    assert perms(channel, admin) & VIEW_CHANNEL and perms(channel, admin) & SEND_MESSAGES  # admin bypasses
    fake_discord.set_overwrite(channel, guild.everyone, allow=VIEW_CHANNEL, deny=SEND_MESSAGES)
    assert perms(channel, member) & VIEW_CHANNEL and not perms(channel, member) & ATTACH_FILES  # implicit


async def test_channel_overwrites_bind_the_bot_and_reach_its_cache(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    guild, channel = discord_world.guild, discord_world.channel
    async with discord_client() as bot:
        fake_discord.set_overwrite(channel, guild.bot_role, deny=ATTACH_FILES)
        cached = bot.get_channel(channel.id)
        me = bot.get_guild(guild.id).me
        await fake_discord.wait_until(lambda: not cached.permissions_for(me).attach_files, 5)
        await cached.send("text is fine")
        with pytest.raises(discord.Forbidden) as denied:
            await cached.send(file=discord.File(io.BytesIO(b"x"), "x.png"))
        assert denied.value.code == 50013
        fake_discord.set_overwrite(channel, guild.everyone, deny=VIEW_CHANNEL)
        with pytest.raises(discord.Forbidden) as hidden:
            await cached.send("cannot see it")
        assert hidden.value.code == 50001


async def test_replies_need_read_message_history(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    guild, channel = discord_world.guild, discord_world.channel
    said = await fake_discord.say(channel, "question", user=discord_world.member)
    async with discord_client() as bot:
        cached = bot.get_channel(channel.id)
        reply = await cached.get_partial_message(said.id).reply("answer")
        sent = fake_discord.get_message(reply.id)
        assert sent is not None and sent.message_reference is not None
        assert sent.message_reference["message_id"] == str(said.id)
        # @everyone's deny beats the bot role's grant (no role overwrite allows it back).
        fake_discord.set_overwrite(channel, guild.everyone, deny=READ_MESSAGE_HISTORY)
        with pytest.raises(discord.Forbidden) as denied:
            await cached.get_partial_message(said.id).reply("again")
        assert (denied.value.status, denied.value.code) == (403, 50013)
        await cached.send("a plain message still works")


async def test_interaction_responses_follow_the_bots_channel_permissions(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    # Responses are webhooks: no SEND_MESSAGES or ATTACH_FILES needed; @everyone and external emojis follow
    # the bot's channel permissions, in the first response, its edits and followups alike.
    guild, channel = discord_world.guild, discord_world.channel
    deny = SEND_MESSAGES | ATTACH_FILES | USE_EXTERNAL_EMOJIS
    fake_discord.set_overwrite(channel, guild.bot_role, deny=deny)
    bot, seen = make_bot()
    async with discord_client(bot):
        inter = await fake_discord.invoke("loud", **where(discord_world))
        await fake_discord.wait_until(lambda: len(inter.followups) == 1, 5)
        assert not seen.app_permissions[0].send_messages and not seen.app_permissions[0].attach_files
        assert inter.original is not None
        messages = [inter.original, *inter.followups]
        assert [m.content for m in messages] == ["@everyone :blob: edited", "@everyone :blob: more"]
        assert all(m.attachments and not m.mention_everyone for m in messages)

        fake_discord.set_overwrite(channel, guild.bot_role, allow=MENTION_EVERYONE | USE_EXTERNAL_EMOJIS)
        again = await fake_discord.invoke("loud", **where(discord_world))
        await fake_discord.wait_until(lambda: len(again.followups) == 1, 5)
        assert seen.app_permissions[1].mention_everyone
        assert (
            again.followups[0].content == "@everyone <:blob:123> more" and again.followups[0].mention_everyone
        )


# ----------------------------------------------------------------------------------------- pagination
async def test_history_pagination_before_after_around(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    channel = discord_world.channel
    msgs = [await fake_discord.say(channel, f"m{i}", user=discord_world.member) for i in range(7)]
    async with discord_client() as bot:
        cached = bot.get_channel(channel.id)

        async def contents(**kwargs: object) -> list[str]:
            return [m.content async for m in cached.history(**kwargs)]

        ref = discord.Object
        assert await contents(limit=3) == ["m6", "m5", "m4"]
        assert await contents(limit=2, before=ref(msgs[4].id)) == ["m3", "m2"]
        # after: the oldest messages after the id (discord.py yields them oldest first).
        assert await contents(limit=3, after=ref(msgs[1].id)) == ["m2", "m3", "m4"]
        assert await contents(limit=None, after=ref(msgs[4].id)) == ["m5", "m6"]
        assert sorted(await contents(limit=3, around=ref(msgs[3].id))) == ["m2", "m3", "m4"]
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    url = f"{fake_discord.api_base}/channels/{channel.id}/messages"
    async with aiohttp.ClientSession() as s, s.get(url, params={"limit": "101"}, headers=headers) as r:
        assert r.status == 400 and (await r.json())["code"] == 50035


# -------------------------------------------------------------------------------------- threads, forum
async def test_threads_public_private_archived(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    guild, channel = discord_world.guild, discord_world.channel
    older = fake_discord.add_thread(channel, "from before the bot started")
    bot, seen = make_bot()
    async with discord_client(bot):
        assert thread_of(bot, guild.id, older.id).name == older.name  # via GUILD_CREATE
        in_thread = await fake_discord.invoke("ping", **where(discord_world, older))
        await in_thread.wait_response(5)
        answer = in_thread.original
        assert answer is not None and answer.channel_id == older.id and answer.content == "pong"
        public = fake_discord.add_thread(channel, "chat", owner=discord_world.member)
        private = fake_discord.add_thread(channel, "secret", private=True, owner=discord_world.member)
        await fake_discord.wait_until(
            lambda: len([e for e in seen.events if e[0] == "on_thread_create"]) == 2, 5
        )
        cached_public = thread_of(bot, guild.id, public.id)
        assert (
            cached_public.parent_id == channel.id and cached_public.type == discord.ChannelType.public_thread
        )
        await cached_public.send("in the thread")
        assert fake_discord.channel_messages(public)[0].content == "in the thread"

        cached_private = thread_of(bot, guild.id, private.id)
        assert cached_private.type == discord.ChannelType.private_thread
        with pytest.raises(discord.Forbidden):  # not a member, no MANAGE_THREADS
            await cached_private.send("hello?")
        fake_discord.add_thread_member(private, fake_discord.bot_user)
        await cached_private.send("now a member")

        # Threads use SEND_MESSAGES_IN_THREADS: denying SEND_MESSAGES on the parent does not stop them.
        fake_discord.set_overwrite(channel, guild.bot_role, deny=SEND_MESSAGES)
        await cached_public.send("still fine")

        fake_discord.archive_thread(public)
        await fake_discord.wait_until(lambda: cached_public.archived, 5)
        with pytest.raises(discord.HTTPException) as archived:
            await cached_public.send("too late")
        assert (archived.value.status, archived.value.code) == (400, 50083)

        started = await text_channel_of(bot, channel.id).create_thread(
            name="bot's", type=discord.ChannelType.private_thread
        )
        assert (
            fake_discord.channels[started.id].type == 12
            and fake_discord.bot_user.id in fake_discord.channels[started.id].member_ids
        )
        fake_discord.set_overwrite(channel, guild.bot_role, allow=MANAGE_THREADS)
        await started.edit(archived=True, locked=True)
        assert fake_discord.channels[started.id].archived and fake_discord.channels[started.id].locked


async def test_forum_posts_are_threads(fake_discord: FakeDiscord, discord_world, discord_client) -> None:
    guild = discord_world.guild
    forum = fake_discord.add_forum(guild, "gallery")
    bot, seen = make_bot()
    async with discord_client(bot):
        cached = guild_of(bot, guild.id).get_channel(forum.id)
        assert isinstance(cached, discord.ForumChannel)
        post = await cached.create_thread(
            name="my art", content="look", file=discord.File(io.BytesIO(b"x"), "a.png")
        )
        assert post.thread.id == post.message.id and post.thread.parent_id == forum.id
        starter = fake_discord.get_message(post.message.id)
        assert starter is not None
        assert starter.channel_id == post.thread.id and starter.attachments[0].filename == "a.png"
        await post.thread.send("a comment")

        user_post, first = fake_discord.add_forum_post(forum, "theirs", "hi", user=discord_world.member)
        await fake_discord.wait_until(lambda: any(e[1].id == user_post.id for e in seen.events), 5)
        assert first.id == user_post.id

    headers = {"Authorization": f"Bot {fake_discord.token}"}
    url = f"{fake_discord.api_base}/channels/{forum.id}/messages"
    async with aiohttp.ClientSession() as s, s.post(url, json={"content": "x"}, headers=headers) as r:
        assert r.status == 400 and (await r.json())["code"] == 50008  # a forum takes posts, not messages


# ------------------------------------------------------------------------------------------- deletion
async def test_channel_and_guild_delete_reach_the_bot(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    bot, seen = make_bot()
    doomed = fake_discord.add_channel(discord_world.guild, "doomed")
    async with discord_client(bot):
        cached = text_channel_of(bot, doomed.id)
        inter = await fake_discord.invoke("ping", **where(discord_world, doomed))
        await inter.wait_response(5)
        fake_discord.delete_channel(doomed)
        await fake_discord.wait_until(lambda: ("on_guild_channel_delete", cached) in seen.events, 5)
        assert bot.get_channel(doomed.id) is None
        with pytest.raises(discord.NotFound) as gone:
            await cached.send("anyone?")
        assert gone.value.code == 10003
        with pytest.raises(discord.NotFound) as followup_gone:
            await discord.Webhook.from_url(
                f"https://discord.com/api/webhooks/{fake_discord.application_id}/{inter.token}", client=bot
            ).send("late news", wait=True)
        assert followup_gone.value.code == 10003

        guild = bot.get_guild(discord_world.guild.id)
        channel = text_channel_of(bot, discord_world.channel.id)
        fake_discord.remove_guild(discord_world.guild)
        await fake_discord.wait_until(lambda: ("on_guild_remove", guild) in seen.events, 5)
        assert bot.get_guild(discord_world.guild.id) is None
        with pytest.raises(discord.NotFound):
            await channel.send("still here?")


# ------------------------------------------------------------------------------------------ rate limits
async def test_rate_limit_headers_are_honoured_by_discord_py(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    fake_discord.rate_limits.set("POST /channels/{channel_id}/messages", limit=2, per=0.3)
    async with discord_client() as bot:
        cached = bot.get_channel(discord_world.channel.id)
        for i in range(5):
            await cached.send(f"n{i}")
    posts = [s for m, p, s in fake_discord.requests if m == "POST" and p.endswith("/messages")]
    # discord.py read X-RateLimit-Remaining and waited instead of hammering: no 429 at all.
    assert posts == [200] * 5 and fake_discord.invalid_requests.count == 0
    with pytest.raises(ValueError, match="no route"):
        fake_discord.rate_limits.set("POST /channel/{channel_id}/messages", limit=1, per=1)


async def test_429_invalid_request_count_and_ban(
    fake_discord: FakeDiscord, discord_world, discord_client
) -> None:
    fake_discord.rate_limits.set("POST /channels/{channel_id}/messages", limit=2, per=60)
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    url = f"{fake_discord.api_base}/channels/{discord_world.channel.id}/messages"
    async with aiohttp.ClientSession() as s:  # a client that ignores the headers
        statuses = []
        for _ in range(3):
            async with s.post(url, json={"content": "spam"}, headers=headers) as r:
                statuses.append(r.status)
                last = (dict(r.headers), await r.json())
        assert statuses == [200, 200, 429]
        answer_headers, body = last
        assert answer_headers["X-RateLimit-Limit"] == "2" and answer_headers["X-RateLimit-Remaining"] == "0"
        assert answer_headers["Via"] and float(answer_headers["X-RateLimit-Reset-After"]) > 0
        assert body["retry_after"] > 0 and body["global"] is False
        async with s.get(f"{fake_discord.api_base}/users/@me", headers={"Authorization": "Bot nope"}) as r:
            assert r.status == 401
    assert [status for _, _, status in fake_discord.invalid_requests.log] == [429, 401]

    fake_discord.rate_limits.set("POST /channels/{channel_id}/messages", limit=50, per=1)  # a fresh bucket
    fake_discord.invalid_requests.limit = 3  # Discord's is 10,000 per 10 minutes
    fake_discord.set_overwrite(discord_world.channel, discord_world.guild.bot_role, deny=SEND_MESSAGES)
    async with discord_client() as bot:
        cached = bot.get_channel(discord_world.channel.id)
        with pytest.raises(discord.Forbidden):
            await cached.send("denied")  # the third invalid request
        with pytest.raises(discord.HTTPException) as banned:
            await bot.fetch_user(discord_world.member.id)
        assert banned.value.status == 429 and not isinstance(banned.value, discord.RateLimited)
    assert fake_discord.invalid_requests.count == 3
