"""The Discord client: wires settings, database, JobManager and cogs together."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

import discord
import yarl
from discord.ext import commands

from bot import shutdown
from bot.db import Database
from bot.db.jobs import JobStore
from bot.db.moderation import ModerationStore
from bot.db.usage import UsageStore
from bot.health import HealthServer
from bot.jobs.admission import Admission
from bot.jobs.manager import JobManager
from bot.metrics import BotMetrics
from bot.settings import Settings
from bot.transport.base import Transport

if TYPE_CHECKING:
    from bot.cogs.imagine._delivery import Courier

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.imagine", "bot.cogs.admin", "bot.cogs.usage", "bot.cogs.models")

# What the bot needs in a channel: see it, post results with files and embeds, reply to the author,
# and add the 🔄 reaction to its results.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    add_reactions=True,
)


def point_at(settings: Settings) -> None:
    """Send discord.py's REST and gateway traffic where the settings say (Discord, a proxy, a loopback)."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def make_transport(settings: Settings) -> Transport:
    if settings.engine_transport == "local":
        from bot.transport.local import LocalTransport, WorkerOptions

        options = WorkerOptions(
            model=settings.model,
            device=settings.device,
            dtype=settings.dtype,
            max_batch=settings.engine_max_batch,
            models_dir=str(settings.models_dir) if settings.models_dir else None,
            lora_dir=str(settings.lora_dir) if settings.lora_dir else None,
            embeddings_dir=str(settings.embeddings_dir) if settings.embeddings_dir else None,
            allow_pickle=settings.allow_pickle_checkpoints,
            extra_args=settings.engine_args,
            safety_checker=settings.safety_checker or None,
            model_cache=(settings.model_cache, settings.model_cache_ram, settings.model_cache_gb),
            log_format=settings.log_format,
            python=settings.engine_python or sys.executable,
        )
        return LocalTransport(options, settings.engine_workers)
    if settings.engine_transport == "nats":
        from bot.transport.nats import NatsTransport

        return NatsTransport(
            settings.nats_url,
            namespace=settings.nats_namespace,
            lease_seconds=settings.nats_lease_seconds,
            auth=settings.nats_auth,
        )  # workers: python -m engine serve --nats URL
    raise NotImplementedError(f"ENGINE_TRANSPORT={settings.engine_transport} is not available yet")


class ImagineBot(commands.Bot):
    courier: Courier  # set by the imagine extension: posts job news and results (bot/cogs/imagine)

    def __init__(self, settings: Settings, *, transport: Transport | None = None) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_reactions = True  # the 🔄 reaction reroll
        self.gateway_up = False  # on_connect / on_resumed / on_disconnect below
        self.metrics = BotMetrics(lambda: self.gateway_up and not self.is_closed())
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            http_trace=self.metrics.trace(),  # Discord REST errors by status
        )
        self.settings = settings
        self.db = Database(settings.database_url)
        self.store = JobStore(self.db.sessions)
        self.jobs = JobManager(
            self.store,
            transport or make_transport(settings),
            settings.output_dir,
            preview_every=settings.preview_every,
        )
        self.metrics.follow(self.jobs)
        self.health: HealthServer | None = None
        if settings.metrics_port is not None:
            self.health = HealthServer(
                self.metrics,
                self.store.undelivered_count,
                host=settings.metrics_host,
                port=settings.metrics_port,
                max_wait=settings.health_max_wait,
            )
        self.admission = Admission(ModerationStore(self.db.sessions), settings)
        self.usage = UsageStore(self.db.sessions)
        self._stopping: asyncio.Future[None] | None = None

    async def setup_hook(self) -> None:
        if self.health is not None:
            await self.health.start()  # first: a supervisor sees "starting" (503) rather than nothing
        await self.db.migrate()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()
        # Cogs subscribed above; now recovered work can be re-announced to them.
        await self.jobs.start()

    async def sync_commands(self) -> None:
        if self.settings.guild_ids:
            for guild_id in self.settings.guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
            log.info("slash commands synced to %d guild(s)", len(self.settings.guild_ids))
        else:
            await self.tree.sync()
            log.info("slash commands synced globally (Discord may take up to an hour to show them)")

    async def on_ready(self) -> None:
        assert self.user is not None
        url = discord.utils.oauth_url(
            self.application_id or self.user.id,
            permissions=INVITE_PERMISSIONS,
            scopes=("bot", "applications.commands"),
        )
        log.info("logged in as %s (%s) in %d guild(s)", self.user, self.user.id, len(self.guilds))
        log.info("invite me: %s", url)

    async def on_connect(self) -> None:
        self.gateway_up = True

    async def on_resumed(self) -> None:
        self.gateway_up = True

    async def on_disconnect(self) -> None:
        self.gateway_up = False

    async def close(self) -> None:
        """Stop in order, each phase within its own bound (bot/shutdown.py): the JobManager and its engine
        workers (no new results), then Discord (no more posting), then the database (nothing left to write).
        A second call waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_in_phases())
        await asyncio.shield(self._stopping)

    async def _stop_in_phases(self) -> None:
        if self.health is not None:
            await shutdown.bounded("metrics server", self.health.close(), shutdown.DATABASE_LIMIT)
        await shutdown.bounded("jobs and engine workers", self.jobs.close(), shutdown.ENGINE_LIMIT)
        await shutdown.bounded("discord", super().close(), shutdown.DISCORD_LIMIT)
        await shutdown.bounded("database", self.db.close(), shutdown.DATABASE_LIMIT)
