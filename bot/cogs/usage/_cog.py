"""/usage [user] (your own, or a member's for admins) and /stats (this server's totals)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging

import discord
from discord import app_commands

from bot import charts
from bot.cogs.common import FriendlyErrors, caller_is_admin, lines_within, reply, seconds, stamp
from bot.db.models import JobState, utcnow
from bot.db.usage import Activity, Totals
from bot.jobs import limits
from bot.jobs.limits import LimitName
from bot.jobs.policy import PolicyError

log = logging.getLogger(__name__)

WAIT_WINDOW = dt.timedelta(days=7)  # the average wait in /stats covers jobs of the last week
CHART_DAYS = 30
CHART_SECONDS = 20.0  # a chart later than this is left out; the numbers are in the text anyway


async def chart(
    name: str, title: str, activity: Activity, top: list[charts.Bar] | None = None
) -> discord.File | None:
    """The PNG chart of ``activity``, drawn off the loop; None when it fails or takes too long."""
    try:
        png = await asyncio.wait_for(charts.draw(title, activity, top or ()), CHART_SECONDS)
    except Exception:  # a chart is a bonus: the answer goes out without it
        log.exception("drawing the %s chart failed", name)
        return None
    return discord.File(io.BytesIO(png), filename=f"{name}.png", description=title)


def chart_since(now: dt.datetime) -> dt.date:
    return now.date() - dt.timedelta(days=CHART_DAYS - 1)


def counted(n: int, noun: str, *, bold: bool = False) -> str:
    """``1 image``, ``2 images``, ``1,000 images`` (the number in bold on request)."""
    number = f"**{n:,}**" if bold else f"{n:,}"
    return f"{number} {noun}{'' if n == 1 else 's'}"


def totals(t: Totals) -> str:
    return (
        f"{counted(t.images, 'image', bold=True)} in {counted(t.jobs, 'job')} · "
        f"{seconds(t.engine_seconds)} of engine time"
    )


class UsageCog(FriendlyErrors):
    @app_commands.command(name="usage", description="Pictures made today, this month and in all")
    @app_commands.describe(user="Someone else's usage (admins only)")
    async def usage(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        target = user or interaction.user
        if target.id != interaction.user.id and not caller_is_admin(interaction):
            raise PolicyError("Only this server's admins can see someone else's usage; try `/usage` alone.")
        now = utcnow()
        store = self.store
        guild_id = interaction.guild_id
        usage = await self.bot.usage.user_usage(
            guild_id, target.id, today=limits.day_start(now), month=limits.month_start(now)
        )
        activity = await store.activity(guild_id, target.id, limits.day_start(now))
        roles = [r.id for r in target.roles] if isinstance(target, discord.Member) else []
        effective = await self.bot.admission.effective(guild_id, target.id, roles)
        quota = effective[LimitName.DAILY_IMAGES]
        left = max(0, quota - usage.today.images - activity.active_images)
        reset = limits.when(limits.next_daily_reset(now), daily=True)
        where = "in this server" if guild_id is not None else "in direct messages"
        lines = [
            f"**Usage for <@{target.id}>** {where}",
            f"Today: {totals(usage.today)}",
            f"This month: {totals(usage.month)}",
            f"All time: {totals(usage.all_time)}",
            f"Daily allowance: {left:,} of {quota:,} images left (`daily_images`); it resets {reset}.",
        ]
        if activity.active_jobs:
            lines.append(
                f"Queued or running now: {counted(activity.active_jobs, 'job')}"
                f" ({counted(activity.active_images, 'image')})."
            )
        days = await self.bot.usage.activity(guild_id, since=chart_since(now), user_id=target.id)
        title = f"Usage of {target.display_name}"
        await reply(interaction, "\n".join(lines), file=await chart("usage", title, days))

    @app_commands.command(
        name="stats", description="This server's totals, top users, waits and queue", extras={"public": True}
    )
    @app_commands.guild_only()
    async def stats(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        if guild_id is None:
            raise app_commands.NoPrivateMessage()
        now = utcnow()
        stats = await self.bot.usage.guild_stats(
            guild_id, today=limits.day_start(now), wait_since=now - WAIT_WINDOW
        )
        active = [j for j in self.bot.jobs.active_jobs() if j.guild_id == guild_id]
        running = sum(1 for j in active if j.state is JobState.RUNNING)
        wait = seconds(stats.average_wait) if stats.average_wait is not None else "no jobs yet"
        lines = [
            f"**Stats for {interaction.guild.name if interaction.guild else 'this server'}**",
            f"All time: {totals(stats.all_time)} · {counted(stats.users, 'member')} made pictures",
            f"Today: {totals(stats.today)}",
            f"Average wait before a job starts (last 7 days): {wait}",
            f"Failed: {stats.failed:,} · cancelled: {stats.cancelled:,}",
            f"Queue now: {running} running and {len(active) - running} waiting here · "
            f"{len(self.bot.jobs.queue)} waiting on all servers",
        ]
        if stats.top:
            lines.append("**Top users**")
            lines += [
                f"{i}. <@{u.user_id}> — {counted(u.images, 'image')}"
                for i, u in enumerate(stats.top, start=1)
            ]
        lines.append(f"_As of {stamp(now, 'f')}._")
        days = await self.bot.usage.activity(guild_id, since=chart_since(now))
        top = [charts.Bar(u.name or f"user {u.user_id}", u.images) for u in stats.top]
        title = f"Stats for {interaction.guild.name if interaction.guild else 'this server'}"
        file = await chart("stats", title, days, top)
        await reply(interaction, lines_within(lines), ephemeral=False, file=file)
