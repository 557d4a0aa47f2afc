"""``create_bot``: the KitBooth Discord bot (discord.py app commands). Torch-free.

``setup_hook`` opens whatever was not injected (DB, artifact store, Redis, arq pool), loads the cogs in
``COGS``, registers the persistent result buttons and the global error handler, starts the events consumer,
re-enqueues jobs Redis lost (start-up reconcile) and syncs the command tree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import discord
from arq import create_pool
from arq.connections import RedisSettings
from discord.ext import commands
from redis.asyncio import Redis

from bot import buttons, errors, events, health, reconcile
from bot.metrics import BotMetrics
from bot.services import PhotoChecker, Services
from bot.translator import KitBoothTranslator
from kitbooth.health import HealthServer
from kitbooth.settings import Settings
from storage import open_store
from storage.database import Database

log = logging.getLogger(__name__)

# Extensions loaded at start-up, in order, by name (``load_extension``): nothing imports a cog module.
# Each module defines ``async def setup(bot)``.
COGS: list[str] = [
    "bot.cogs.train",
    "bot.cogs.generate",
    "bot.cogs.catalog",
    "bot.cogs.privacy",
    "bot.cogs.queue",
    "bot.cogs.admin",
    "bot.cogs.help",
    "bot.cogs.squad",
]


class KitBoothBot(commands.Bot):
    """The bot. ``services`` is set in ``setup_hook`` (or at construction when everything was injected)."""

    services: Services

    def __init__(
        self,
        settings: Settings,
        *,
        db: Any = None,
        store: Any = None,
        redis: Any = None,
        arq: Any = None,
        cogs: list[str] | None = None,
        run_consumer: bool = True,
        run_reconcile: bool = True,
        photo_checker: PhotoChecker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``photo_checker`` and ``clock`` are the test seams documented on ``Services``."""
        intents = discord.Intents.default()  # slash commands need no privileged intents
        # Replies echo user text (prompts, names, file names): nothing the bot sends pings @everyone, @here or a
        # role, and users only where a message opts in (e.g. the result delivered to its owner).
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None,
                         allowed_mentions=discord.AllowedMentions.none())
        self.settings = settings
        self._injected = {"db": db, "store": store, "redis": redis, "arq": arq}
        self._owned: list[Any] = []
        self.cog_modules = list(COGS if cogs is None else cogs)
        self.run_consumer = run_consumer
        self.run_reconcile = run_reconcile
        self._seams = {"photo_checker": photo_checker, "clock": clock}
        self.consumer: events.EventConsumer | None = None  # once started
        self.health: HealthServer | None = None  # /healthz + /readyz + /metrics when KITBOOTH_HEALTH_PORT is set
        self.metrics = BotMetrics()  # bot.errors counts refusals and incidents; on_app_command_completion the rest

    # --- lifecycle -----------------------------------------------------------------------------------
    async def _open_services(self) -> Services:
        s = self.settings
        db = self._injected["db"]
        if db is None:
            db = await Database.open(s.db_path)
            self._owned.append(db)
        store = self._injected["store"] or await asyncio.to_thread(open_store, s)  # local or S3, probed once
        redis = self._injected["redis"]
        if redis is None:
            redis = Redis.from_url(s.redis_url)
            self._owned.append(redis)
        arq = self._injected["arq"]
        if arq is None:
            arq = await create_pool(RedisSettings.from_dsn(s.redis_url), default_queue_name=s.queue_name)
            self._owned.append(arq)
        return Services(settings=s, db=db, store=store, redis=redis, arq=arq, **self._seams)

    async def setup_hook(self) -> None:
        if self.settings.health_port and self.health is None:
            self.health = HealthServer(lambda: health.readiness_checks(self),
                                       metrics=lambda: self.metrics.render(getattr(self, "services", None)))
            await self.health.start(self.settings.health_port)
        if getattr(self, "services", None) is None:
            self.services = await self._open_services()
        errors.install(self)
        if self.tree.translator is None:  # localised command names and descriptions (issue 16)
            await self.tree.set_translator(KitBoothTranslator())
        for name in self.cog_modules:
            if name in self.extensions:
                continue
            await self.load_extension(name)
        buttons.install(self)
        if self.run_reconcile:
            try:
                n = await reconcile.reconcile(self.services)
                if n:
                    log.info("reconcile: re-enqueued %d job(s) that Redis had lost", n)
            except Exception:
                log.exception("start-up reconcile failed; continuing")
        if self.run_consumer:
            self.consumer = events.EventConsumer(self)
            await self.consumer.start()
        if self.settings.dev_guild_id:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        await self.tree.sync()

    async def close(self) -> None:
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        try:
            await super().close()
        finally:
            for res in reversed(self._owned):
                try:
                    closer = getattr(res, "aclose", None) or res.close
                    await closer()
                except Exception:  # closing is best effort
                    log.debug("close failed for %r", res, exc_info=True)
            self._owned.clear()

    async def on_app_command_completion(self, interaction: discord.Interaction, command: Any) -> None:
        self.metrics.command(command.qualified_name, "ok")


def create_bot(settings: Settings, **kwargs: Any) -> KitBoothBot:
    """Build the bot (keyword arguments as ``KitBoothBot``). Anything not injected is opened from ``settings`` in
    ``setup_hook``."""
    return KitBoothBot(settings, **kwargs)
