"""/queue (admins: what is running and waiting in this server) and /cancel (authors and admins)."""

from __future__ import annotations

import re

import discord
from discord import app_commands

from bot.cogs.common import (
    FriendlyErrors,
    admin_only,
    caller_is_admin,
    code,
    lines_within,
    reply,
    seconds,
)
from bot.db.models import Job, JobState
from bot.jobs.policy import PolicyError

SHORT_ID = 8  # /queue shows this many hex digits; /cancel accepts any unique prefix this long or longer
_JOB_ID = re.compile(r"[0-9a-f]{6,32}")


def short(job_id: str) -> str:
    return job_id[:SHORT_ID]


class QueueCog(FriendlyErrors):
    @app_commands.command(name="queue", description="What is running and waiting in this server")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        jobs = self.bot.jobs
        active = jobs.active_jobs()
        here = [j for j in active if j.guild_id == guild_id]
        running = sum(1 for j in here if j.state is JobState.RUNNING)
        waiting = len(here) - running
        lines = [
            f"**Queue** — here: {running} running, {waiting} waiting · all servers: {len(jobs.queue)} waiting"
        ]
        if not here:
            lines.append("Nothing is running or waiting in this server.")
        for job in here:
            if job.state is JobState.RUNNING:
                where = "🎨 running"
            else:
                position = jobs.position(job.id)
                eta = jobs.estimate_wait(job.id)
                where = f"⏳ #{position}" + (f", ~{seconds(eta)}" if eta is not None else "")
            size = f"{job.count}× {job.width}×{job.height}"
            prio = f" · priority {job.priority}" if job.priority else ""
            who = f"<@{job.user_id}>"
            lines.append(f"{code(short(job.id), 20)} {where} · {who} · {size}{prio} · {code(job.prompt, 60)}")
        await reply(interaction, lines_within(lines))

    @app_commands.command(
        name="cancel", description="Cancel a queued or running job (yours, or any as an admin)"
    )
    @app_commands.describe(job="The job id (the first 8 characters are enough)")
    async def cancel(self, interaction: discord.Interaction, job: str) -> None:
        found = await self._find(interaction, job)
        is_author = found.user_id == interaction.user.id
        if not is_author and not caller_is_admin(interaction):
            raise PolicyError("Only the job's author or this server's admins can cancel it.")
        if found.state.finished:
            raise PolicyError(f"Job {code(short(found.id), 20)} is already {found.state.value}.")
        if not await self.bot.jobs.cancel(found.id):
            raise PolicyError(f"Job {code(short(found.id), 20)} just finished; there is nothing to cancel.")
        if not is_author and interaction.guild_id is not None:
            await self.bot.admission.store.record(
                interaction.guild_id,
                interaction.user.id,
                "job.cancel",
                f"user:{found.user_id} job {found.id}",
            )
        await reply(interaction, f"🚫 Cancelling job {code(short(found.id), 20)}.")

    async def _find(self, interaction: discord.Interaction, text: str) -> Job:
        """The job ``text`` names, in the guild (or DM) the command is used in."""
        wanted = text.strip().lower()
        if not _JOB_ID.fullmatch(wanted):
            raise PolicyError("That doesn't look like a job id: it is 6 to 32 letters a-f and digits.")
        here = [j for j in self.bot.jobs.active_jobs() if j.guild_id == interaction.guild_id]
        matches = [j for j in here if j.id.startswith(wanted)]
        if len(matches) > 1:
            raise PolicyError("More than one job starts with that; give a few more characters.")
        if matches:
            return matches[0]
        job = await self.bot.store.get(wanted) if len(wanted) == 32 else None
        if job is None or job.guild_id != interaction.guild_id:
            raise PolicyError(f"I can't find a queued or running job {code(wanted, 40)} here.")
        return job

    @cancel.autocomplete("job")
    async def _jobs(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        admin = caller_is_admin(interaction)
        wanted = current.strip().lower()
        choices = []
        for job in self.bot.jobs.active_jobs():
            if job.guild_id != interaction.guild_id or not (admin or job.user_id == interaction.user.id):
                continue
            if wanted and not job.id.startswith(wanted):
                continue
            label = f"{short(job.id)} · {job.state.value} · {' '.join(job.prompt.split())}"
            choices.append(app_commands.Choice(name=label[:100], value=job.id))
        return choices[:25]
