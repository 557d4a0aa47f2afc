"""``Outgoing`` → discord.py message arguments, for both posters (worker REST and bot fallback)."""

from __future__ import annotations

import io
from typing import Any

import discord

from kitbooth.render import Outgoing

_STYLES = {
    "primary": discord.ButtonStyle.primary, "secondary": discord.ButtonStyle.secondary,
    "success": discord.ButtonStyle.success, "danger": discord.ButtonStyle.danger,
}


def view_of(msg: Outgoing) -> discord.ui.View | None:
    if not msg.buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in msg.buttons:
        view.add_item(discord.ui.Button(label=b.label, custom_id=b.custom_id, style=_STYLES[b.style], row=b.row))
    return view


def files_of(msg: Outgoing) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in msg.files]


def allowed_mentions(user_id: int | None) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(user_id)] if user_id else False, everyone=False,
                                   roles=False)


def send_kwargs(msg: Outgoing, *, mention: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Messageable.send`` (the bot's fallback delivery)."""
    out = msg.with_mention(mention) if mention else msg
    kwargs: dict[str, Any] = {"content": out.content, "allowed_mentions": allowed_mentions(mention)}
    files = files_of(out)
    if files:
        kwargs["files"] = files
    view = view_of(out)
    if view is not None:
        kwargs["view"] = view
    return kwargs
