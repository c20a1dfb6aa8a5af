"""Admin commands: /limits, /ban, /unban, /blocklist, /queue, /cancel. Each is gated twice (Discord's
Manage Server default and a check in the bot) and acts only on the guild it is used in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.admin._limits import LimitsCog
from bot.cogs.admin._moderation import ModerationCog
from bot.cogs.admin._queue import QueueCog

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(LimitsCog(bot))
    await bot.add_cog(ModerationCog(bot))
    await bot.add_cog(QueueCog(bot))
