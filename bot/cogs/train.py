"""/train (being written)."""

from __future__ import annotations

from discord.ext import commands


class TrainCog(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot


async def setup(bot) -> None:
    await bot.add_cog(TrainCog(bot))
