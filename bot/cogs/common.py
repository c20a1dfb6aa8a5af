"""What every cog of this bot shares (a public module, so no cog imports another's private one): the in-bot
admin check, one error handler that turns every failure into a short ephemeral answer (never a
traceback), and small formatting helpers.

Discord's own gate (``default_permissions``) hides admin commands from members without Manage Server,
but a guild can loosen it in its integration settings; the check here runs on every call regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import ImagineBot
from bot.jobs.policy import PolicyError
from bot.permissions import is_admin

if TYPE_CHECKING:
    from bot.db.moderation import ModerationStore

log = logging.getLogger(__name__)

T = TypeVar("T")

ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)
MAX_CONTENT = 2000  # Discord refuses a message whose content is longer
MAX_MESSAGE = 1900  # leave room for a "…and N more" line
NO_MENTIONS = discord.AllowedMentions.none()


class NotAdmin(app_commands.CheckFailure):
    """The caller is not an admin of the guild the command was used in."""


def bot_of(interaction: discord.Interaction) -> ImagineBot:
    """The bot an interaction reached: discord.py types ``interaction.client`` as any Client."""
    client = interaction.client
    if not isinstance(client, ImagineBot):
        raise TypeError(f"interaction handled by a {type(client).__name__}, not the ImagineBot")
    return client


def caller_is_admin(interaction: discord.Interaction) -> bool:
    bot = bot_of(interaction)
    return interaction.guild_id is not None and is_admin(
        bot.settings, interaction.user, interaction.permissions
    )


def admin_only() -> Callable[[T], T]:
    """The in-bot half of the admin gate: Manage Server, Administrator, ADMIN_ROLE_IDS or ADMIN_USER_IDS,
    in the guild the command is used in (so an admin of guild A has no say in guild B)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not caller_is_admin(interaction):
            raise NotAdmin()
        return True

    return app_commands.check(predicate)


async def reply(
    interaction: discord.Interaction,
    content: str,
    *,
    ephemeral: bool = True,
    file: discord.File | None = None,
) -> None:
    """Answer the interaction, or follow up when it was already answered (a deferred command)."""
    fields = within_limits({"content": content, "ephemeral": ephemeral, "allowed_mentions": NO_MENTIONS})
    if file is not None:
        fields["file"] = file
    if interaction.response.is_done():
        await interaction.followup.send(**fields)
    else:
        await interaction.response.send_message(**fields)


AUTOCOMPLETE_BUDGET = 2.0  # seconds: Discord gives an autocomplete 3 s and no way to defer it


async def within_budget(work: Awaitable[list[T]]) -> list[T]:
    """An autocomplete's choices, or none when finding them (a database read, a folder walk) is slow:
    an empty list in time beats an answer Discord has already dropped."""
    try:
        return await asyncio.wait_for(work, AUTOCOMPLETE_BUDGET)
    except TimeoutError:
        log.info("an autocomplete ran out of time; answered with no choices")
        return []


def is_public(command: object) -> bool:
    """Whether a command answers the channel (``extras={"public": True}``, e.g. /stats) or only the caller."""
    extras = getattr(command, "extras", None)
    return bool(isinstance(extras, dict) and extras.get("public"))


async def refuse_after_defer(interaction: discord.Interaction, text: str) -> None:
    """Answer a refusal privately although the command was deferred publicly.

    After a "thinking" defer, Discord turns the first followup into the deferred message and keeps the
    defer's visibility, so an ephemeral followup alone would show the refusal to the whole channel. The
    public "thinking…" is deleted first (the channel sees it vanish, as with other bots), then the
    refusal is a fresh ephemeral followup. Should the delete fail, the refusal replaces the "thinking…"
    instead of leaving it spinning."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(**within_limits({"content": text}))
        return
    with contextlib.suppress(discord.HTTPException):
        await interaction.followup.send(**within_limits({"content": text, "ephemeral": True}))


# ------------------------------------------------------------------------------------------ the sender
# Every message this bot writes goes through send/edit/reply, so Discord's limits are applied in one place:
# a text over them is clipped here instead of being refused by Discord (and retried forever).


def within_limits(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a message with its text clipped to Discord's limits (the bot sends no embeds)."""
    content = fields.get("content")
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        return {**fields, "content": clip(content, MAX_CONTENT)}
    return fields


async def send(channel: discord.abc.Messageable, **fields: Any) -> discord.Message:
    """Post a message in ``channel`` (a guild channel, a thread or a DM)."""
    return await channel.send(**within_limits(fields))


async def edit(
    target: discord.Message | discord.PartialMessage | discord.Interaction, **fields: Any
) -> discord.Message:
    """Edit a message of the bot's: an interaction's reply (through its token) or a channel message."""
    if isinstance(target, discord.Interaction):
        return await target.edit_original_response(**within_limits(fields))
    return await target.edit(**within_limits(fields))


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# An absolute path: POSIX (two or more parts, not inside a URL or a word) or Windows (C:\...).
_POSIX_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`,;:()<>\[\]]+){2,}")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\s\\'\"`,;:()<>]+\\)*([^\s\\'\"`,;:()<>]*)")
_TRACEBACK_LINE = re.compile(r'^\s*(File ".*", line \d+.*|Traceback \(most recent call last\):)$')


def public_error(text: str | None, limit: int = 400) -> str:
    """An error (from the engine, a worker, saving a file) made fit for members: no traceback, no absolute
    path (a file keeps only its name), one line, no pings or markdown surprises, bounded."""
    if not text:
        return "unknown error"
    lines = text.splitlines()
    if any(_TRACEBACK_LINE.match(line) for line in lines):
        # A traceback's last unindented line is the exception itself; the frames above are for the log.
        lines = [line for line in lines if line.strip() and not line.startswith((" ", "\t"))]
        lines = [line for line in lines if not _TRACEBACK_LINE.match(line)][-1:]
    flat = " ".join(lines)
    flat = _POSIX_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1] or "…", flat)
    flat = _WINDOWS_PATH.sub(lambda m: m.group(1) or "…", flat)
    return safe(flat, limit) or "unknown error"


def lines_within(lines: list[str], limit: int = MAX_MESSAGE) -> str:
    """Whole lines up to ``limit`` characters, then how many were left out."""
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > limit - 30:
            out.append(f"…and {len(lines) - i} more")
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)


def safe(text: str, limit: int = 80) -> str:
    """User-supplied text shown back: one line, no pings, no markdown surprises, bounded."""
    text = discord.utils.escape_mentions(discord.utils.escape_markdown(" ".join(text.split())))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code(text: str, limit: int = 100) -> str:
    """User-supplied text inside `inline code`: markdown is not rendered there, only backticks break out."""
    text = " ".join(text.split()).replace("`", "ˋ")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"`{text}`"


def stamp(moment: dt.datetime, style: str = "R") -> str:
    """A Discord timestamp: rendered in the reader's own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


def seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


class FriendlyErrors(commands.Cog):
    """A cog of this bot whose command errors become ephemeral explanations, logged when unexpected.

    Its commands are acknowledged before they run (:meth:`interaction_check` runs first, ahead of the
    admin check, the database and any network): Discord drops an interaction not answered within 3 s, and
    a busy database alone can take longer. Privately, unless the command is public (:func:`is_public`).
    A cog that acknowledges by itself (the /imagine cog, which answers some refusals at once) sets
    ``defer_first = False``."""

    defer_first: ClassVar[bool] = True

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @property
    def store(self) -> ModerationStore:
        """Limits, bans, blocked terms, the audit log and usage queries (admission's own store, so that
        its cache of each guild's rules sees every change)."""
        return self.bot.admission.store

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if self.defer_first and not interaction.response.is_done():
            await interaction.response.defer(ephemeral=not is_public(interaction.command), thinking=True)
        return True

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original: BaseException = error
        if isinstance(error, app_commands.CommandInvokeError):
            original = error.original
        if isinstance(original, NotAdmin):
            text = "🔒 Only this server's admins (Manage Server, or a bot admin role) can use that command."
        elif isinstance(original, app_commands.NoPrivateMessage):
            text = "That command only works in a server, not in direct messages."
        elif isinstance(original, PolicyError):
            text = f"⚠️ {original}"
        elif isinstance(original, app_commands.TransformerError):
            text = (
                f"⚠️ I couldn't understand the value `{safe(str(original.value), 40)}`; please pick it again."
            )
        elif isinstance(original, app_commands.CheckFailure):
            text = "🔒 You can't use that command here."
        else:
            log.error(
                "command %s failed in guild %s",
                interaction.command.qualified_name if interaction.command else "?",
                interaction.guild_id,
                exc_info=original,
            )
            text = "❌ Sorry, something went wrong on my side. Please try again in a moment."
        try:
            if is_public(interaction.command) and interaction.response.is_done():
                await refuse_after_defer(interaction, text)  # a refusal is the caller's, not the channel's
            else:
                await reply(interaction, text)
        except discord.HTTPException as exc:
            log.info("could not send an error reply: %s", exc)
