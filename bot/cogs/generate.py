"""/generate: pictures of you (your own trained face, always) in a kit and a style from this server's catalogue.

Validation happens first and is fast (``bot.generate_request``): a refusal is an ephemeral reply. Then the
interaction is deferred (public: the worker puts the images in that message), the job row is written, the
payload is enqueued and the reply shows the queue position.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import catalogue, jobs
from bot.generate_request import describe, enqueue_generate, prepare_request
from bot.translator import locale_of, tr
from kitbooth import limits

if TYPE_CHECKING:
    from bot.app import KitBoothBot

log = logging.getLogger(__name__)


class GenerateCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="generate", description="A picture of you in your club's kit.")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="The scene, e.g. 'lifting the trophy in the rain'",
        kit="A kit from this server's catalogue (/kits)",
        style="A style from this server's catalogue (/styles)",
        count=f"How many images ({limits.COUNT_MIN}-{limits.COUNT_MAX})",
        seed="Same seed + same prompt = same picture",
        shape="Image shape",
    )
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, limits.PROMPT_CHARS],
        kit: app_commands.Range[str, 1, limits.NAME_CHARS] | None = None,
        style: app_commands.Range[str, 1, limits.NAME_CHARS] | None = None,
        count: app_commands.Range[int, limits.COUNT_MIN, limits.COUNT_MAX] = limits.COUNT_MAX,
        seed: app_commands.Range[int, 0, limits.SEED_MAX] | None = None,
        shape: Literal["square", "portrait", "landscape"] = "square",
    ) -> None:
        services = self.bot.services
        req, face = await prepare_request(services, interaction, prompt=prompt, kit=kit, style=style,
                                          count=count, seed=seed, shape=shape)
        await interaction.response.defer(thinking=True)  # public: the results land in this message
        job, queue = await enqueue_generate(services, interaction, req, face)
        locale = locale_of(interaction)
        sent = await interaction.followup.send(
            tr(interaction, "queued.generate", request=describe(req, locale), queue=jobs.format_queue(queue, locale),
               job_id=str(job.id)), wait=True)
        await jobs.record_echo(services, job, sent)  # /forget deletes it

    @generate.autocomplete("kit")
    async def _kit_autocomplete(self, interaction: discord.Interaction, current: str):
        return await catalogue.kit_autocomplete(interaction, current)

    @generate.autocomplete("style")
    async def _style_autocomplete(self, interaction: discord.Interaction, current: str):
        return await catalogue.style_autocomplete(interaction, current)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(GenerateCog(bot))
