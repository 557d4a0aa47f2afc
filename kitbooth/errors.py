"""The error hierarchy shared by every process. Torch-free.

``UserFacingError`` carries a short message that tells the user what to do; the bot shows it as an
ephemeral reply and the worker puts it in a ``job.failed`` event. Anything else is a bug: it is logged with
an incident id and the user sees only that id.
"""

from __future__ import annotations


class KitBoothError(Exception):
    """Base class of KitBooth's own errors."""


class UserFacingError(KitBoothError):
    """An error whose message is safe and useful to show the user as is (one or two short sentences)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(UserFacingError):
    """The user's input (photo, prompt, file, option) cannot be used."""


class NotAllowed(UserFacingError):
    """The user may not do this (not the owner, missing permission, consent not given)."""


class NotFound(UserFacingError):
    """The thing the user named does not exist (or is not theirs)."""


class QuotaExceeded(UserFacingError):
    """A quota or rate limit was reached."""


class Busy(UserFacingError):
    """A conflicting operation is already running (e.g. a second training)."""


class IncompatibleArtifact(InvalidInput):
    """A concept file made for another base model, or in a format we cannot read."""


class JobCancelled(KitBoothError):
    """A running job was cancelled between steps (not an error the user caused)."""
