"""The texts of squad photos: keys of the ``kitbooth.i18n`` catalogues (``squad.*``, ``refusal.squad_*``, the
``cmd.squad.*`` and ``cmd.me.*`` command-tree keys). Channel messages of a squad are shared by several members,
so they speak the server's language (``guild_locale``); a refusal and a ``/me`` reply speak the member's."""

from __future__ import annotations

from typing import Any

import discord

from kitbooth.i18n import DISCORD_CODE, ENGLISH, Lang, keyed, translate


def t(key: str, locale: Any = ENGLISH, /, **fields: Any) -> str:
    return translate(key, locale, **fields)


def refusal(cls: type, key: str, /, **fields: Any) -> Any:
    """A ``UserFacingError`` of ``cls`` that the error handler renders in the member's language."""
    return keyed(cls, key, **fields)


def guild_locale(client: discord.Client, guild_id: int | None) -> str:
    """The server's preferred language as a Discord code ("de"), "en-US" when unknown or not shipped."""
    guild = client.get_guild(guild_id) if guild_id else None
    return DISCORD_CODE[Lang.pick(getattr(guild, "preferred_locale", None))]
