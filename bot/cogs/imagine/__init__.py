"""/imagine: prompt in, grid out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.imagine._cog import ImagineCog
from bot.cogs.imagine._delivery import Courier

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    # The courier lives on the client, so buttons and the reaction reach it through interaction.client.
    bot.courier = Courier(bot)
    await bot.add_cog(ImagineCog(bot))
