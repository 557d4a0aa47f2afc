"""Slash commands and replies in the member's language (``kitbooth.i18n`` catalogues).

``KitBoothTranslator`` gives discord.py the localised names and descriptions of every command, option and
choice. Keys are derived from where the string sits in the tree, so a cog needs no translation code:

    command / group         cmd.<qualified name, spaces as dots>.name | .description
    option                  cmd.<qualified name>.<option>.name | .description
    choice                  choice.<value>.name

A string that needs its own key (two choices with one value but different English) names it:
``app_commands.Choice(name=locale_str("LoRA — default", key="choice.method.lora.default.name"), value="lora")``.
English is the text in the code (the translator answers None for it). ``tr(interaction, key, **fields)`` is the
reply side: the member's locale, then the server's preferred locale, then English.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

from kitbooth.i18n import DISCORD_CODE, ENGLISH, Lang, catalogue, folder_of, render_error, translate


def command_key(qualified_name: str) -> str:
    return "cmd." + ".".join(qualified_name.split())


def key_for(context: app_commands.TranslationContext) -> str | None:
    """The catalogue key of a command-tree string, None for strings KitBooth does not translate."""
    data: Any = context.data
    loc = context.location
    if loc in (Where.command_name, Where.group_name):
        return command_key(data.qualified_name) + ".name"
    if loc in (Where.command_description, Where.group_description):
        return command_key(data.qualified_name) + ".description"
    if loc is Where.parameter_name:
        return f"{command_key(data.command.qualified_name)}.{data.name}.name"
    if loc is Where.parameter_description:
        return f"{command_key(data.command.qualified_name)}.{data.name}.description"
    if loc is Where.choice_name:
        return f"choice.{data.value}.name"
    return None


class KitBoothTranslator(app_commands.Translator):
    """Command-tree localisations from the shipped catalogues (English stays as written in the cogs)."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContext) -> str | None:
        folder = folder_of(locale.value)
        if folder is None or folder == ENGLISH:
            return None
        key = string.extras.get("key") or key_for(context)
        return catalogue(folder).get(key) if key else None


def locale_of(interaction: discord.Interaction) -> str:
    """The member's language as a Discord code ("pt-BR"): their client's locale when KitBooth speaks it, else
    the server's preferred locale, else "en-US". Job payloads carry it (``DiscordTarget.locale``)."""
    return DISCORD_CODE[Lang.pick(getattr(interaction, "locale", None), getattr(interaction, "guild_locale", None))]


def tr(interaction: discord.Interaction, key: str, /, **fields: Any) -> str:
    """``key``'s text in the language of whoever sent ``interaction``."""
    return translate(key, locale_of(interaction), **fields)


def error_text(interaction: discord.Interaction, error: Any) -> str:
    """A ``UserFacingError`` in the member's language (its own message when it carries no key)."""
    return render_error(error, locale_of(interaction))
