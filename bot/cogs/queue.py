"""/queue: your jobs' places in the queue with a rough ETA, and how busy KitBooth is overall."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import jobs

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services

KIND_LABELS = {"train": "🏋️ training", "generate": "🎨 images", "vary": "🎲 variation", "reroll": "🔁 reroll",
               "upscale": "🔍 upscale", "export": "📦 export"}


async def queue_text(services: Services, user_id: int) -> str:
    mine = await services.db.active_jobs(user_id)
    lines = []
    depth = None
    for job in mine:
        info = await jobs.queue_position(services, job)
        depth = info.depth
        label = KIND_LABELS.get(job.kind, job.kind)
        if job.status == "running":
            where = "running now"
        elif info.position:
            where = jobs.format_queue(info)
        else:
            where = "waiting for the next training slice" if job.kind == "train" else "about to start"
        prompt = job.payload.get("prompt") if isinstance(job.payload, dict) else None
        extra = f" — “{str(prompt)[:50]}”" if prompt else ""
        lines.append(f"• {label} (job {job.id}): {where}{extra}")
    if depth is None:
        depth = int(await services.arq.zcard(services.settings.queue_name))
    head = "\n".join(lines) if lines else "You have no jobs queued or running."
    busy = "empty" if depth == 0 else f"{depth} job{'s' * (depth != 1)} waiting"
    return f"{head}\n\nQueue overall: {busy}."


class QueueCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Where your jobs are in the queue, and how busy KitBooth is.")
    async def queue(self, interaction: discord.Interaction) -> None:
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(await queue_text(services, interaction.user.id), ephemeral=True)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(QueueCog(bot))
