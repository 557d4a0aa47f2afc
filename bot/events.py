"""Events consumer (filled in below)."""

from __future__ import annotations


class EventConsumer:
    def __init__(self, bot) -> None:
        self.bot = bot

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
