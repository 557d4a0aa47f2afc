"""/queue: your jobs' places in the queue with a rough ETA, and how busy KitBooth is overall."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import jobs
from bot.translator import locale_of
from kitbooth.i18n import translate

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services

# English labels (queue.kind.<kind> in the catalogues).
KIND_LABELS = {"train": "🏋️ training", "generate": "🎨 images", "vary": "🎲 variation", "reroll": "🔁 reroll",
               "upscale": "🔍 upscale", "export": "📦 export"}


async def queue_text(services: Services, user_id: int, locale: str = "en-US") -> str:
    mine = await services.db.active_jobs(user_id)
    lines = []
    depth = None
    for job in mine:
        info = await jobs.queue_position(services, job)
        depth = info.depth
        label = translate(f"queue.kind.{job.kind}", locale) if job.kind in KIND_LABELS else job.kind
        if job.status == "running":
            where = translate("queue.running_now", locale)
        elif info.position:
            where = jobs.format_queue(info, locale)
        else:
            where = translate("queue.next_slice" if job.kind == "train" else "queue.about_to_start", locale)
        prompt = job.payload.get("prompt") if isinstance(job.payload, dict) else None
        extra = f" — “{str(prompt)[:50]}”" if prompt else ""
        lines.append(translate("queue.line", locale, label=label, job_id=str(job.id), where=where) + extra)
    if depth is None:
        depth = int(await services.arq.zcard(services.settings.queue_name))
    head = "\n".join(lines) if lines else translate("queue.none", locale)
    busy = translate("queue.empty", locale) if depth == 0 else translate("queue.waiting", locale, count=depth)
    return f"{head}\n\n" + translate("queue.overall", locale, busy=busy)


class QueueCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Where your jobs are in the queue, and how busy KitBooth is.")
    async def queue(self, interaction: discord.Interaction) -> None:
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(await queue_text(services, interaction.user.id, locale_of(interaction)),
                                        ephemeral=True)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(QueueCog(bot))
