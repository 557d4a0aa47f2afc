"""One global error handler for app commands, modals and buttons. Torch-free.

- ``kitbooth.errors.UserFacingError`` (and discord.py's own check failures) → a short ephemeral reply.
- Anything else → logged once with a short incident id; the user sees only the id.
Tokens never reach the logs: ``TokenRedactingFilter`` scrubs the bot token and interaction tokens.
"""

from __future__ import annotations

import logging
import re
import secrets
import traceback

import discord
from discord import app_commands

from kitbooth.errors import UserFacingError

log = logging.getLogger(__name__)

GENERIC = "Something went wrong (incident {incident}). Try again in a minute."


def new_incident_id() -> str:
    return secrets.token_hex(3)


def user_message(error: BaseException) -> str | None:
    """The message to show for an expected error, or None when ``error`` is a bug."""
    original = error
    while isinstance(original, (app_commands.CommandInvokeError, app_commands.TransformerError)) and (
        original.__cause__ is not None or getattr(original, "original", None) is not None
    ):
        nxt = getattr(original, "original", None) or original.__cause__
        if nxt is original:
            break
        original = nxt
    if isinstance(original, UserFacingError):
        return str(original)
    if isinstance(original, app_commands.CommandOnCooldown):
        return f"Slow down — try again in {original.retry_after:.0f} s."
    if isinstance(original, app_commands.MissingPermissions):
        return "You need the Manage Server permission for that."
    if isinstance(original, app_commands.NoPrivateMessage):
        return "This command works in a server, not in DMs."
    if isinstance(original, app_commands.CheckFailure):
        return str(original) or "You can't use this command here."
    if isinstance(original, app_commands.TransformerError):
        return f"I couldn't understand {original.value!r}."
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
    text = user_message(error)
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
        text = GENERIC.format(incident=incident)
    await reply(interaction, text)
    return incident


def install(bot: discord.Client) -> None:
    """Route every app-command error of ``bot.tree`` through ``handle_interaction_error``."""
    tree: app_commands.CommandTree = bot.tree  # type: ignore[attr-defined]

    async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError):
        await handle_interaction_error(interaction, error)

    tree.on_error = on_app_command_error  # type: ignore[method-assign]
    install_log_redaction(getattr(getattr(bot, "settings", None), "discord_token", None))


# --- token redaction ---------------------------------------------------------------------------------
# Interaction tokens are base64 of "interaction:<id>:..." → they start with this prefix.
_INTERACTION_TOKEN = re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-.]+")
_BOT_TOKEN = re.compile(r"[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,40}")


class TokenRedactingFilter(logging.Filter):
    """Replace the bot token and interaction tokens in log records (message, args and traceback text)."""

    def __init__(self, secrets_: list[str] | None = None):
        super().__init__()
        self.secrets = [s for s in (secrets_ or []) if s]

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "[token]")
        text = _INTERACTION_TOKEN.sub("[interaction-token]", text)
        return _BOT_TOKEN.sub("[token]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        red = self.redact(msg)
        if red != msg:
            record.msg, record.args = red, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


_installed: TokenRedactingFilter | None = None


def install_log_redaction(token: object = None) -> TokenRedactingFilter:
    """Attach the redacting filter to every root handler (and to new ones via the root logger)."""
    global _installed
    secret = token.get_secret_value() if hasattr(token, "get_secret_value") else token
    if _installed is None:
        _installed = TokenRedactingFilter()
    if isinstance(secret, str) and secret and secret not in _installed.secrets:
        _installed.secrets.append(secret)
    root = logging.getLogger()
    for handler in root.handlers:
        if _installed not in handler.filters:
            handler.addFilter(_installed)
    return _installed
