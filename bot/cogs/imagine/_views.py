"""The buttons under a result and under a running job.

Every button is a :class:`JobButton` whose custom_id carries the action and the job id
(``imb:u:<job>:2``), registered with ``bot.add_dynamic_items``: after a restart, a click on a month-old
message still finds its job in the database. Nothing is kept in memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.db.models import Job

if TYPE_CHECKING:
    from bot.cogs.imagine._cog import ImagineCog

ACTIONS = ("reroll", "u", "v", "del", "info", "cancel")


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imb:(?P<action>reroll|u|v|del|info|cancel):(?P<job>[0-9a-f]{32})(?::(?P<index>[1-4]))?",
):
    def __init__(self, action: str, job_id: str, index: int | None = None, *, row: int | None = None) -> None:
        label, emoji, style = _LOOK[action]
        custom_id = f"imb:{action}:{job_id}" + (f":{index}" if index is not None else "")
        super().__init__(
            discord.ui.Button(
                label=f"{label}{index}" if index is not None else label,
                emoji=emoji,
                style=style,
                custom_id=custom_id,
                row=row,
            )
        )
        self.action = action
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> JobButton:
        index = match["index"]
        return cls(match["action"], match["job"], int(index) if index else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog: ImagineCog | None = interaction.client.get_cog("ImagineCog")  # type: ignore[attr-defined]
        if cog is None:
            await interaction.response.send_message("I'm restarting; try again in a moment.", ephemeral=True)
            return
        await cog.on_button(interaction, self.action, self.job_id, self.index)


_LOOK: dict[str, tuple[str | None, str | None, discord.ButtonStyle]] = {
    "reroll": (None, "🔄", discord.ButtonStyle.secondary),
    "u": ("U", None, discord.ButtonStyle.secondary),
    "v": ("V", None, discord.ButtonStyle.secondary),
    "del": (None, "🗑️", discord.ButtonStyle.secondary),
    "info": (None, "ℹ️", discord.ButtonStyle.secondary),
    "cancel": ("Cancel", None, discord.ButtonStyle.danger),
}


def result_view(job: Job) -> discord.ui.View:
    """U1–U4 and 🔄 on the first row, V1–V4 on the second, ℹ️ and 🗑 on the third (Midjourney's layout)."""
    view = discord.ui.View(timeout=None)
    indices = range(1, len(job.images) + 1)
    if job.kind != "upscale":
        for i in indices:
            view.add_item(JobButton("u", job.id, i, row=0))
    view.add_item(JobButton("reroll", job.id, row=0))
    for i in indices:
        view.add_item(JobButton("v", job.id, i, row=1))
    view.add_item(JobButton("info", job.id, row=2))
    view.add_item(JobButton("del", job.id, row=2))
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id))
    return view
