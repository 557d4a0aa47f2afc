"""A test-only cog whose commands fail, for the global error handler's tests."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from kitbooth.errors import QuotaExceeded


class Boom(commands.Cog):
    @app_commands.command(name="boom", description="fails before answering")
    async def boom(self, interaction: discord.Interaction) -> None:
        raise RuntimeError(f"database exploded; token={interaction.token}")

    @app_commands.command(name="boom-late", description="fails after deferring")
    async def boom_late(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        raise KeyError(interaction.token)

    @app_commands.command(name="refuse", description="a user-facing refusal")
    async def refuse(self, interaction: discord.Interaction) -> None:
        raise QuotaExceeded("You've used all 5 of today's images.")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Boom())
