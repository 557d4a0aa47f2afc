"""The KitBooth Discord bot (discord.py; no torch). ``create_bot(settings)`` builds it; ``kitbooth bot`` runs it."""

from bot.app import KitBoothBot, create_bot

__all__ = ["KitBoothBot", "create_bot"]
