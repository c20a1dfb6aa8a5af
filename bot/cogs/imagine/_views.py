"""The buttons under a result and under a running job.

Every button is a :class:`JobButton` whose custom_id carries the action and the job id
(``imb:u:<job>:2``), registered with ``bot.add_dynamic_items``: after a restart, a click on a month-old
message still finds its job in the database. Nothing is kept in memory. A click reaches its handler
through ``interaction.client`` (the bot's courier and stores), never through a cog looked up by name.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.cogs.common import bot_of
from bot.cogs.imagine._actions import Action, on_button
from bot.db.models import Job
from engine.protocol import JobKind


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imb:(?P<action>reroll|u|v|del|info|cancel):(?P<job>[0-9a-f]{32})(?::(?P<index>[1-4]))?",
):
    def __init__(
        self, action: Action, job_id: str, index: int | None = None, *, row: int | None = None
    ) -> None:
        label, emoji, style = _LOOK[action]
        custom_id = f"imb:{action.value}:{job_id}" + (f":{index}" if index is not None else "")
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
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        index = match["index"]
        return cls(Action(match["action"]), match["job"], int(index) if index else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        await on_button(bot_of(interaction), interaction, self.action, self.job_id, self.index)


_LOOK: dict[Action, tuple[str | None, str | None, discord.ButtonStyle]] = {
    Action.REROLL: (None, "🔄", discord.ButtonStyle.secondary),
    Action.UPSCALE: ("U", None, discord.ButtonStyle.secondary),
    Action.VARY: ("V", None, discord.ButtonStyle.secondary),
    Action.DELETE: (None, "🗑️", discord.ButtonStyle.secondary),
    Action.INFO: (None, "ℹ️", discord.ButtonStyle.secondary),
    Action.CANCEL: ("Cancel", None, discord.ButtonStyle.danger),
}


def result_view(job: Job) -> discord.ui.View:
    """U1–U4 and 🔄 on the first row, V1–V4 on the second, ℹ️ and 🗑 on the third (Midjourney's layout)."""
    view = discord.ui.View(timeout=None)
    indices = range(1, len(job.images) + 1)
    if job.kind != JobKind.UPSCALE:
        for i in indices:
            view.add_item(JobButton(Action.UPSCALE, job.id, i, row=0))
    view.add_item(JobButton(Action.REROLL, job.id, row=0))
    for i in indices:
        view.add_item(JobButton(Action.VARY, job.id, i, row=1))
    view.add_item(JobButton(Action.INFO, job.id, row=2))
    view.add_item(JobButton(Action.DELETE, job.id, row=2))
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(Action.CANCEL, job_id))
    return view
