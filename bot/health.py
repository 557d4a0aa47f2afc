"""The bot's /readyz checks (see kitbooth/health.py): the Discord gateway, the database, Redis, the store.

Started by ``setup_hook`` when ``KITBOOTH_HEALTH_PORT`` is set, so /readyz reports "not connected" until the
gateway's READY arrives and again whenever the gateway drops.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kitbooth.health import Check

if TYPE_CHECKING:
    from discord.ext import commands


def readiness_checks(bot: commands.Bot) -> dict[str, Check]:
    async def gateway() -> str:
        if bot.is_closed() or not bot.is_ready():
            raise RuntimeError("not connected to Discord")
        return f"connected, {len(bot.guilds)} guild(s), latency {bot.latency * 1000:.0f} ms"

    def services():
        s = getattr(bot, "services", None)
        if s is None:
            raise RuntimeError("starting")
        return s

    async def database() -> str:
        row = await services().db._one("PRAGMA user_version")  # through the repository's lock
        return f"schema version {row[0]}"

    async def redis() -> str:
        await services().redis.ping()
        return "answers PING"

    async def store() -> str:
        await asyncio.to_thread(services().store.check)
        return "answers"

    return {"gateway": gateway, "database": database, "redis": redis, "store": store}
