"""/imagine: prompt in, grid out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.imagine._cog import ImagineCog

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ImagineCog(bot))
