"""One global error handler for app commands, modals and buttons. Torch-free.

- ``kitbooth.errors.UserFacingError`` (and discord.py's own check failures) → a short ephemeral reply.
- Anything else → logged once with a short incident id; the user sees only the id.
Tokens never reach the logs: ``kitbooth.log_redaction.TokenRedactingFilter`` scrubs the bot token and interaction tokens.
"""

from __future__ import annotations

import logging
import secrets
import traceback

import discord
from discord import app_commands

from bot.translator import locale_of
from kitbooth.errors import UserFacingError
from kitbooth.i18n import ENGLISH, render_error, translate
from kitbooth.log_redaction import install_log_redaction

log = logging.getLogger(__name__)

GENERIC = "Something went wrong (incident {incident}). Try again in a minute."  # error.incident in English


def new_incident_id() -> str:
    return secrets.token_hex(3)


def user_message(error: BaseException, locale: str = ENGLISH) -> str | None:
    """The message to show for an expected error in ``locale``, or None when ``error`` is a bug."""
    original = error
    while isinstance(original, (app_commands.CommandInvokeError, app_commands.TransformerError)) and (
        original.__cause__ is not None or getattr(original, "original", None) is not None
    ):
        nxt = getattr(original, "original", None) or original.__cause__
        if nxt is original:
            break
        original = nxt
    if isinstance(original, UserFacingError):
        return render_error(original, locale)
    if isinstance(original, app_commands.CommandOnCooldown):
        return translate("error.cooldown", locale, seconds=round(original.retry_after))
    if isinstance(original, app_commands.MissingPermissions):
        return translate("error.missing_manage_server", locale)
    if isinstance(original, app_commands.NoPrivateMessage):
        return translate("error.no_dm", locale)
    if isinstance(original, app_commands.CheckFailure):
        return str(original) or translate("error.check_failed", locale)
    if isinstance(original, app_commands.TransformerError):
        return translate("error.not_understood", locale, value=repr(original.value))
    return None


def unwrap(error: BaseException) -> BaseException:
    return getattr(error, "original", None) or error


async def reply(interaction: discord.Interaction, text: str) -> None:
    """Answer ephemerally whether or not the interaction was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:  # the interaction may have expired; nothing more to do
        log.warning("could not deliver an error reply (status %s)", getattr(exc, "status", "?"))


async def handle_interaction_error(interaction: discord.Interaction, error: BaseException, *,
                                   where: str | None = None) -> str | None:
    """Reply to the user; return the incident id when the error was unexpected (and logged)."""
    locale = locale_of(interaction)
    text = user_message(error, locale)
    incident = None
    if text is None:
        incident = new_incident_id()
        cmd = where or (f"/{interaction.command.qualified_name}" if interaction.command else "interaction")
        original = unwrap(error)
        # The traceback is formatted here so this interaction's token can be cut out of it (and of the
        # message) whatever its format; the log filter catches tokens in Discord's own formats elsewhere.
        details = "".join(traceback.format_exception(original))
        token = getattr(interaction, "token", None)
        if token:
            details = details.replace(token, "[interaction-token]")
        log.error(
            "incident %s: %s failed for user %s in guild %s\n%s", incident, cmd,
            interaction.user.id if interaction.user else "?", interaction.guild_id, details.rstrip(),
        )
        text = translate("error.incident", locale, incident=incident)
    metrics = getattr(interaction.client, "metrics", None)  # bot.metrics.BotMetrics on the KitBooth bot
    if metrics is not None and interaction.command is not None:
        metrics.command(interaction.command.qualified_name, "refused" if incident is None else "error")
    await reply(interaction, text)
    return incident


def install(bot: discord.Client) -> None:
    """Route every app-command error of ``bot.tree`` through ``handle_interaction_error``."""
    tree: app_commands.CommandTree = bot.tree  # type: ignore[attr-defined]

    async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError):
        await handle_interaction_error(interaction, error)

    tree.on_error = on_app_command_error  # type: ignore[method-assign]
    install_log_redaction(getattr(getattr(bot, "settings", None), "discord_token", None))
