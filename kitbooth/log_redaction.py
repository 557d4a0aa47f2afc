"""Keeping secrets out of the logs: the bot token and Discord interaction tokens (which the worker's payloads
carry) are scrubbed from every record, its arguments and its traceback text. Installed by ``kitbooth``'s
entry point for every process; the bot also installs it when it starts."""

from __future__ import annotations

import logging
import re

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
