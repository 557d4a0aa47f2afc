"""KitBooth's one error tree, shared by every process. Standard library only.

    KitBoothError
    ├── UserFacingError          message is safe to show as is; says what to do (one or two sentences)
    │   ├── InvalidInput         the user's photo, prompt, file or option cannot be used
    │   │   └── IncompatibleArtifact   a concept file we cannot read or compose (wrong model, bad header, ...)
    │   ├── NotAllowed           not the owner, missing permission, consent not given
    │   ├── NotFound             the thing named does not exist (or is not theirs)
    │   ├── QuotaExceeded        a quota or rate limit was reached
    │   └── Busy                 a conflicting operation is already running
    ├── PayloadError (ValueError)  a job payload or event that does not match the contract: never retried
    ├── TransientError           something outside us failed for a moment (Redis, the store, Discord 5xx):
    │   │                        the worker's job runner retries the job (a training: the same slice)
    │   └── StoreUnavailable     (also a StorageError) the artifact store did not answer or refused a write
    ├── JobCancelled             a running job saw its cancel flag between steps (not the user's fault)
    └── StorageError             storage/: keys and objects
        ├── InvalidKey (ValueError)      an unsafe or malformed artifact key
        ├── ArtifactNotFound (KeyError)  no object under this key
        └── StoreUnavailable             (see above)

The bot turns a ``UserFacingError`` into a short ephemeral reply; anything outside the tree is a bug, logged
once with an incident id. The worker's job runner (``gpu_worker.runner``) maps each class to an outcome by type
(retry / fail with the user's message / drop), never by message text.
"""

from __future__ import annotations


class KitBoothError(Exception):
    """Base class of KitBooth's own errors."""


class UserFacingError(KitBoothError):
    """An error whose message is safe and useful to show the user as is (one or two short sentences).

    ``key``/``fields``: the catalogue key the message was rendered from (``kitbooth.i18n.keyed`` builds such an
    error with its English text), so the bot and the worker can show it in the member's language."""

    def __init__(self, message: str, *, key: str | None = None, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.fields = dict(fields or {})

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
    """A concept file made for another base model, or in a format we cannot read or compose."""


class PayloadError(KitBoothError, ValueError):
    """A payload or event that does not match the contract (a bug or a version skew: never retried)."""


class TransientError(KitBoothError):
    """A dependency failed for a moment (Redis blip, store hiccup, Discord 5xx): the job is worth retrying."""


class JobCancelled(KitBoothError):
    """A running job was cancelled between steps (not an error the user caused)."""


class StorageError(KitBoothError):
    """Base class of storage errors."""


class InvalidKey(StorageError, ValueError):
    """An artifact key that is unsafe or malformed."""


class ArtifactNotFound(StorageError, KeyError):
    """No object under this key."""

    def __str__(self) -> str:
        return f"no artifact {self.args[0]!r}"


class StoreUnavailable(StorageError, TransientError):
    """The artifact store did not answer, or refused a write (disk full, S3 5xx)."""
