"""/help, and the welcome message when KitBooth joins a server: what it does, the three steps, the privacy
promise and /forget, and the admins' setup checklist — in the member's (or the server's) language.

Command names in the text are the localised ones of that language (``cmd.*.name`` in its catalogue), so a
German server reads ``/trainieren`` where a German client shows it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.translator import command_key, locale_of
from kitbooth.i18n import Lang, catalogue, translate

if TYPE_CHECKING:
    from bot.app import KitBoothBot

log = logging.getLogger(__name__)

# The lines of the message, in order (each a catalogue key); {placeholders} are command names.
MEMBER_LINES = ("help.intro", "help.steps", "help.step_train", "help.step_generate", "help.step_kits")
# After a blank line: else Discord's markdown runs them on as part of the numbered list's last step.
PROMISE_LINES = ("help.prompts_english", "help.privacy")
ADMIN_LINES = ("help.admin_title", "help.admin_settings", "help.admin_kits", "help.admin_channel")
COMMANDS = {"train": "train", "generate": "generate", "kits": "kits", "forget": "forget", "me": "me",
            "settings": "kitbooth settings", "kit_add": "kit add", "kit_train": "kit train", "help": "help"}


def command_name(qualified: str, locale: str) -> str:
    """``/kit add`` as the language shows it (``/kit hinzufügen``), the English name where it has none."""
    folder = Lang.pick(locale)
    parts = qualified.split()
    shown = [catalogue(folder).get(command_key(" ".join(parts[: i + 1])) + ".name") or p
             for i, p in enumerate(parts)]
    return "/" + " ".join(shown)


def help_text(locale: str) -> str:
    """The welcome / help message in ``locale``."""
    names = {k: command_name(v, locale) for k, v in COMMANDS.items()}
    return "\n\n".join("\n".join(translate(k, locale, **names) for k in lines)
                       for lines in (MEMBER_LINES, PROMISE_LINES, ADMIN_LINES))


def may_post(channel: discord.abc.GuildChannel | None, me: discord.Member | None) -> bool:
    if channel is None or me is None or not isinstance(channel, discord.TextChannel):
        return False
    perms = channel.permissions_for(me)
    return perms.view_channel and perms.send_messages


class HelpCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What KitBooth does, how to start, and your privacy.")
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(help_text(locale_of(interaction)), ephemeral=True)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        """One welcome in the system channel, in the server's preferred locale (nothing when it may not post)."""
        channel = guild.system_channel
        if not may_post(channel, guild.me):
            log.info("joined guild %s: no system channel KitBooth may post in; no welcome", guild.id)
            return
        assert channel is not None
        try:
            await channel.send(help_text(str(getattr(guild.preferred_locale, "value", "en-US"))))
        except discord.HTTPException as exc:  # best effort: /help says the same
            log.info("joined guild %s: the welcome could not be posted (%s)", guild.id, exc)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(HelpCog(bot))
