"""/models (what members can pick, with family and native size) and /default-model (admins: the model
/imagine uses in this server when a member names none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.models._cog import ModelsCog

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ModelsCog(bot))
