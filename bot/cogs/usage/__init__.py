"""/usage and /stats: what members and the server have used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.usage._cog import UsageCog

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(UsageCog(bot))
